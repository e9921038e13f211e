"""Execute a notebook with this interpreter's ipykernel (its built-in ``python3`` spec, no kernelspec install)."""


def execute_notebook(nb, cwd, timeout=180):
    """Run ``nb`` in place with ``cwd`` as its working folder; returns it with outputs."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)  # ipykernel's own: sys.executable
    km = KernelManager(kernel_name='python3', kernel_spec_manager=ksm)
    NotebookClient(nb, km=km, timeout=timeout, resources={'metadata': {'path': str(cwd)}}).execute()
    return nb
