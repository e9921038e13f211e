"""Plots: the chapter's ``show_images``/``set_figsize``/``plt``, overlays, legend, confusion matrix, curves.

The only module of the package that imports matplotlib, so every figure helper lives here (over
300 lines for that reason).
"""
import os
import sys

import numpy as np
from matplotlib import pyplot as plt  # matplotlib falls back to Agg where there is no display
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from mxnet import nd

from ..core.errors import D2lsegError
from ..core.outputs import write_atomically
from ..data.pixels import overlay_bands
from ..core.textfiles import who
from ..data.palette import VOC_CLASSES, VOC_COLORMAP


def figure_format(path, flag=None):
    """The image format a figure file's name asks for (its extension; none: PNG); one-line D2lsegError naming
    ``flag`` when matplotlib cannot write it (checked before the work whose figure it is)."""
    ext = os.path.splitext(path)[1].lower().lstrip('.') or 'png'
    if ext not in FigureCanvasBase.get_supported_filetypes():
        raise D2lsegError(f"{who(path, flag)}: figures are written as .png, .svg or .pdf files, not .{ext}; name "
                          "the file so")
    return ext


def save_figure(fig, path, dpi=100, **kw):
    """Write ``fig`` to ``path`` whole or not at all (a temporary beside it, renamed: ``outputs``), closed."""
    try:
        fmt = figure_format(path)
        write_atomically(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, **kw))
    except OSError as e:
        raise D2lsegError(f"{path}: writing the figure failed ({e.strerror}); free disk space or choose another "
                          "place") from None
    finally:
        plt.close(fig)


def _np_img(img):
    return img.asnumpy() if isinstance(img, nd.NDArray) else np.asarray(img)


def _in_jupyter():
    """True inside a Jupyter kernel (not merely with IPython installed)."""
    ipython = sys.modules.get('IPython')
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, 'kernel')


def use_svg_display():
    """Draw inline figures as SVG in notebooks (as d2l does); nothing elsewhere. In a plain script, asking
    matplotlib_inline would create an IPython shell, and matplotlib < 3.9 then imports IPython's
    ``backend2gui``, which IPython 9 removed (ImportError at the first plot)."""
    if not _in_jupyter():
        return
    try:
        from matplotlib_inline import backend_inline
        backend_inline.set_matplotlib_formats('svg')
    except ImportError:  # pragma: no cover
        pass


def use_photo_display(quality=85):
    """Draw inline figures as JPEG in notebooks: photo-like scenes (noise, texture) stay sharp at full
    resolution where PNG would store them several times larger; nothing outside Jupyter."""
    if not _in_jupyter():
        return
    try:
        from matplotlib_inline import backend_inline
        backend_inline.set_matplotlib_formats('jpeg', pil_kwargs={'quality': quality})
    except ImportError:  # pragma: no cover
        pass


def figure_description(fig):
    """A figure's text for a reader who cannot see it (the book's alt text): its title, then its panels'
    titles, e.g. 'exercise 3: 3 settings x 3 seeds. Panels: training loss per setting; ...'."""
    sup = getattr(fig, '_suptitle', None)  # Figure.get_suptitle() only from matplotlib 3.8
    title = sup.get_text().strip() if sup is not None else ''
    panels = [t for t in (ax.get_title().strip() for ax in fig.axes) if t]
    if not title and not panels:
        return f'a figure of {len(fig.axes)} panel(s) without titles'
    return title + ('. ' if title and panels else '') + ('Panels: ' + '; '.join(panels) if panels else '')


def describe_figures():
    """In a notebook, make a figure's text/plain output its ``figure_description`` instead of
    '<Figure size ... with N Axes>': the stored notebook then carries each figure's title, which the
    book uses as the image's alt text. Nothing outside Jupyter."""
    if _in_jupyter():
        shell = sys.modules['IPython'].get_ipython()
        shell.display_formatter.formatters['text/plain'].for_type(
            Figure, lambda fig, printer, cycle: printer.text(figure_description(fig)))


def set_figsize(figsize=(3.5, 2.5)):
    """Set the default figure size. Source: D2L."""
    use_svg_display()
    plt.rcParams['figure.figsize'] = figsize


def show_images(imgs, num_rows, num_cols, scale=2):
    """A grid of images (NDArray or numpy, HxW or HxWx3) -> the axes. Source: D2L."""
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    for i in range(num_rows):
        for j in range(num_cols):
            k = i * num_cols + j
            if k < len(imgs):
                axes[i][j].imshow(_np_img(imgs[k]))
            axes[i][j].axes.get_xaxis().set_visible(False)
            axes[i][j].axes.get_yaxis().set_visible(False)
    return axes


def overlay(img, pred, alpha=0.5, colors=None, rows=256):
    """Blend class colours (default VOC's) over an image: (H, W, 3) uint8 and (H, W) indices -> (H, W, 3) uint8.

    Computed ``rows`` image rows at a time (``pixels.overlay_bands``), so beyond the result it holds float
    copies of a band only (a whole-image float blend needs about 60 bytes per pixel)."""
    img, pred = _np_img(img), _np_img(pred)
    out = np.empty(img.shape[:2] + (3,), np.uint8)
    bands = overlay_bands(img, pred, VOC_COLORMAP if colors is None else colors, alpha, rows)
    for y, band in zip(range(0, img.shape[0], rows), bands):
        out[y:y + rows] = band
    return out


def _handles(classes=None, class_list=None):
    """Legend patches of the classes (all, or the indices in ``classes``) of ``class_list`` (default VOC's)."""
    names = VOC_CLASSES if class_list is None else class_list.names
    colors = VOC_COLORMAP if class_list is None else class_list.colors
    idx = range(len(names)) if classes is None else sorted(set(int(c) for c in classes))
    return [Patch(color=np.asarray(colors[i]) / 255, label=names[i]) for i in idx]


def legend(ax=None, classes=None, class_list=None):
    """A colour legend of the classes (all, or the indices in ``classes``) of ``class_list`` (default VOC's)."""
    ax = ax or plt.gca()
    ax.legend(handles=_handles(classes, class_list), loc='center left', bbox_to_anchor=(1, 0.5), fontsize='small',
              frameon=False)
    return ax


def prediction_grid(rows, titles=('input', 'label', 'prediction'), path=None, scale=2.2, class_list=None):
    """Columns of (image, label indices, predicted indices) with row titles and a legend of the classes
    shown (and of the void border, where a label has it) -> the figure, saved to ``path``. rows: a list
    of (H, W, 3) uint8 and two (H, W) index arrays; class_list: the classes' names and colours (default
    VOC's). ``label_grid`` with one column per example."""
    return label_grid([list(part) for part in zip(*rows)], titles, class_list=class_list, scale=scale, path=path)


def legend_figure(classes, path=None, class_list=None, title='class colours'):
    """A stand-alone colour legend of the classes with indices ``classes`` (of ``class_list``, default VOC's)
    -> the figure, saved to ``path``."""
    fig, ax = plt.subplots(figsize=(2.6, 0.3 + 0.26 * max(len(classes), 1)))
    ax.axis('off')
    legend(ax, classes, class_list)
    ax.get_legend().set_bbox_to_anchor((0, 0.5))
    ax.get_legend().set_title(title)
    if path:
        save_figure(fig, path, bbox_inches='tight')
    return fig


CELL_NUMBERS = 12  # up to this many classes the confusion matrix prints a number in every cell


def plot_confusion(mat, classes=VOC_CLASSES, ax=None, normalize=True):
    """Heat map of a confusion matrix (rows: true class, columns: predicted)."""
    m = np.asarray(mat, dtype=np.float64)
    if normalize:
        with np.errstate(invalid='ignore', divide='ignore'):
            m = np.nan_to_num(m / m.sum(axis=1, keepdims=True))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(m, cmap='Blues', vmin=0, vmax=1 if normalize else None)
    n = len(classes)
    size = 7 if n > CELL_NUMBERS else 12 - 5 * n // CELL_NUMBERS  # 21 classes 7 pt, 4 classes 11 pt
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=90, fontsize=size)
    ax.set_yticklabels(classes, fontsize=size)
    if n <= CELL_NUMBERS:  # few classes: the share (or count) in every cell
        top = m.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f'{m[i, j]:.2f}' if normalize else f'{int(m[i, j])}', ha='center', va='center',
                        fontsize=size - 1, color='white' if m[i, j] > 0.6 * top else 'black')
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    plt.colorbar(im, ax=ax, fraction=0.046)
    return ax


def confusion_figure(mat, classes, title, path):
    """The row-normalised confusion matrix with its title, saved to ``path``."""
    _, ax = plt.subplots(figsize=(7.5, 6.5))
    plot_confusion(mat, classes, ax)
    ax.set_title(f'confusion matrix (share of each true class): {title}', fontsize=9)
    ax.figure.tight_layout()
    save_figure(ax.figure, path)


def plot_history(history, path=None):
    """Training curves of a ``fit`` history (loss; train acc, val acc, val mIoU) -> the figure, saved to ``path``."""
    epochs = history['epochs'] if isinstance(history, dict) else history
    x = [r['epoch'] for r in epochs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(x, [r['loss'] for r in epochs], 'o-', label='train loss')
    a1.set_ylabel('loss')
    a1.set_title('training loss')
    a1.legend()
    for key, label in (('train_acc', 'train pixel acc'), ('test_acc', 'val pixel acc (crops)'),
                       ('val_miou', 'val mIoU (crops)')):
        if epochs and key in epochs[0]:
            a2.plot(x, [r[key] for r in epochs], 'o-', label=label)
    a2.set_ylim(0, 1)
    a2.set_ylabel('fraction')
    a2.set_title('accuracy' + (' and mIoU' if epochs and 'val_miou' in epochs[0] else ''))
    a2.legend()
    for ax in (a1, a2):
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


BAND_TITLES = {'loss': 'train loss', 'train_acc': 'train pixel acc', 'test_acc': 'val pixel acc',
               'val_miou': 'val mIoU'}


def plot_band(band, history=None, path=None):
    """A stored band (bench/spread.py) per figure: every run, the min-max range, the mean; and ``history``
    (a run to judge) on top when given -> the figure, saved to ``path``."""
    figures = [k for k in BAND_TITLES if k in band['epochs'][0]]
    fig, axes = plt.subplots(1, len(figures), figsize=(3.2 * len(figures), 3.0), squeeze=False)
    x = [r['epoch'] for r in band['epochs']]
    for ax, key in zip(axes[0], figures):
        for i, run in enumerate(band.get('runs', [])):
            ax.plot(x, [r[key] for r in run['epochs'][:len(x)]], color='0.75', lw=0.8,
                    label=f"{len(band['runs'])} stored runs" if i == 0 else None)
        ax.fill_between(x, [r[key]['min'] for r in band['epochs']], [r[key]['max'] for r in band['epochs']],
                        color='tab:blue', alpha=0.2, label='band (min-max)')
        ax.plot(x, [r[key]['mean'] for r in band['epochs']], color='tab:blue', label='band mean')
        if history is not None:
            ours = history['epochs'][:len(x)]
            ax.plot([r['epoch'] for r in ours], [r[key] for r in ours], 'o-', color='tab:red', label='this run')
        ax.set_title(BAND_TITLES[key])
        ax.set_xlabel('epoch')
        ax.set_ylabel('loss' if key == 'loss' else 'fraction')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize='small')
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def log_ticks(axis, values):
    """Readable ticks on a log-scale ``axis`` (e.g. ``ax.yaxis``) for the data ``values``: 1, 2, 5 per decade,
    also 1.5, 3, 4, 7 when the data span less than a decade; every tick labelled alike, no minor ticks."""
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype=np.float64)
    decades = np.log10(v.max() / v.min()) if len(v) else 2.0
    subs = (1, 1.5, 2, 3, 4, 5, 7) if decades < 1 else (1, 2, 5) if decades < 3 else (1,)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f'{x:g}'))
    axis.set_minor_locator(NullLocator())


def plot_sweep(runs, baseline=None, path=None):
    """Runs of a hyper-parameter sweep: each run's training loss per epoch, and each run's final val
    mIoU and val pixel accuracy (a dashed line at ``baseline``, e.g. the all-background pixel accuracy)
    -> the figure, saved to ``path``. runs: {name: {'epochs': [fit records], 'diverged': None or why}}.
    Runs that share epochs (a longer run repeating a shorter one) stay visible: each later run is drawn
    thinner, with a smaller marker of another shape and another dash pattern, on top of the earlier ones."""
    names = list(runs)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw=dict(width_ratios=(1, 1.25)))
    last_k = max(len(names) - 1, 1)
    for k, name in enumerate(names):
        eps = runs[name]['epochs']
        mark = ' (diverged)' if runs[name].get('diverged') else ''
        a1.plot([r['epoch'] for r in eps], [r['loss'] for r in eps], label=name + mark, alpha=0.85,
                ls=('-', '--', '-.', ':')[k % 4], marker='osD^vPX*'[k % 8], mfc='none',
                lw=3.6 - 2.4 * k / last_k, ms=10 - 6 * k / last_k)
    a1.set_yscale('log')
    log_ticks(a1.yaxis, [r['loss'] for run in runs.values() for r in run['epochs']])
    a1.set_xlabel('epoch')
    a1.set_ylabel('train loss (log scale)')
    a1.set_title('training loss per run')
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.legend(fontsize='x-small', handlelength=3.5)
    x = np.arange(len(names))
    for k, (key, label) in enumerate((('val_miou', 'val mIoU'), ('test_acc', 'val pixel acc'))):
        last = [runs[n]['epochs'][-1][key] if runs[n]['epochs'] else 0.0 for n in names]
        a2.bar(x + (k - 0.5) * 0.38, last, 0.38, label=label)
    if baseline is not None:
        a2.axhline(baseline, color='k', ls='--', lw=1, label='all-background pixel acc')
    a2.set_xticks(x)
    a2.set_xticklabels([n + (' (diverged)' if runs[n].get('diverged') else '') for n in names], rotation=30,
                       ha='right', fontsize='small')
    a2.set_ylim(0, 1)
    a2.set_ylabel('fraction (last epoch)')
    a2.set_title('validation figures per run')
    a2.legend(fontsize='x-small')
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


class CurvesCallback:
    """Training callback: rewrite ``curves.png`` after every epoch (chief only)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, state):
        if state.is_chief:
            plot_history(state.history, self.path)


def number_grid(ax, values, title=None, highlight=None, fmt='{:g}'):
    """Draw a small matrix as a grid of numbered cells, row and column indices on the axes -> ``ax``.

    values: (h, w); highlight: (h, w) booleans, cells drawn shaded (default: the non-zero ones).
    For the scatter diagrams of a transposed convolution (D2L 10.10.1)."""
    v = np.atleast_2d(_np_img(values))
    mark = v != 0 if highlight is None else np.asarray(highlight, dtype=bool)
    h, w = v.shape
    ax.imshow(np.where(mark, 0.35, 0.0), cmap='Blues', vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    for i in range(h):
        for j in range(w):
            ax.text(j, i, fmt.format(v[i, j]), ha='center', va='center', fontsize=9)
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.set_xticks(np.arange(-0.5, w), minor=True)
    ax.set_yticks(np.arange(-0.5, h), minor=True)
    ax.grid(which='minor', color='0.3', lw=0.8)
    ax.tick_params(which='both', length=0, labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_scatter(X, K, rows):
    """A transposed convolution drawn as a sum, one row per stride: the input, the kernel, each input
    element's scaled copy of the kernel where it lands, and their sum. rows: {stride: (parts, total)}, parts
    being ((i, j), the copy in the output's frame, a mask of where it lies) per input element -> the figure."""
    n = len(next(iter(rows.values()))[0])
    fig, axes = plt.subplots(len(rows), n + 3, figsize=(15, 3.2 * len(rows)), squeeze=False,
                             gridspec_kw={'width_ratios': [2, 2] + [4] * (n + 1)})
    for row, (s, (parts, total)) in zip(axes, rows.items()):
        number_grid(row[0], X, f'input u ({X.shape[0]}x{X.shape[1]})', highlight=np.zeros(X.shape))
        number_grid(row[1], K, f'kernel K ({K.shape[0]}x{K.shape[1]})', highlight=np.zeros(K.shape))
        for ax, ((i, j), P, mask) in zip(row[2:-1], parts):
            number_grid(ax, P, f'{"" if (i, j) == (0, 0) else "+ "}u[{i},{j}]·K = {X[i, j]:g}·K', mask)
        number_grid(row[-1], total, f'= output {total.shape[0]}x{total.shape[1]}', np.ones(total.shape))
        row[0].set_ylabel(f'stride {s}', fontsize=11)
    fig.suptitle('transposed convolution: every input element adds a scaled copy of the kernel into the output')
    fig.tight_layout(h_pad=3)  # room between the rows: titles clear of the tick labels above
    return fig


def block_diagram(ax, blocks, steps, title=None):
    """Boxes left to right joined by labelled arrows (an architecture) -> ``ax``.

    blocks: (text, height) per box, heights in (0, 1] (e.g. the relative spatial size); steps: the
    arrows' labels, one fewer than blocks."""
    n = len(blocks)
    for i, (text, height) in enumerate(blocks):
        x = 2.2 * i
        ax.add_patch(plt.Rectangle((x, -height / 2), 1.2, height, facecolor='#dbe8f6', edgecolor='0.2'))
        ax.text(x + 0.6, -max(height / 2, 0.1) - 0.08, text, ha='center', va='top', fontsize=8)
    for i, label in enumerate(steps):
        ax.annotate('', xy=(2.2 * (i + 1) - 0.05, 0), xytext=(2.2 * i + 1.25, 0),
                    arrowprops=dict(arrowstyle='->', lw=1.2))
        ax.text(2.2 * i + 1.7, 0.06, label, ha='center', va='bottom', fontsize=7.5)
    ax.set_xlim(-0.3, 2.2 * (n - 1) + 1.5)
    ax.set_ylim(-1.0, 0.62)
    ax.axis('off')
    if title:
        ax.set_title(title, fontsize=10)
    return ax


VOID_ENTRY = {255: ('void (ignored)', (224, 224, 192))}  # how label maps show VOC's void border


def _palette(class_list=None, extra=VOID_ENTRY):
    """(256, 3) uint8 colours of class indices (``class_list``'s, default VOC's) and of ``extra``'s values."""
    colors = VOC_COLORMAP if class_list is None else class_list.colors
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(colors)] = colors
    for value, (_, rgb) in extra.items():
        palette[value] = rgb
    return palette


def label_grid(rows, row_titles, col_titles=None, class_list=None, extra=None, classes=(), scale=2.2, path=None):
    """Rows of images and class-index maps, row titles on the left, one colour legend -> the figure.

    rows: equally long lists, one per row, of (H, W, 3) uint8 images or (H, W) class-index maps;
    index maps are coloured by the classes' colours (``class_list``, default VOC's), other values by
    ``extra`` ({value: (name, RGB)}, void 255 by default); the legend lists every class and extra value
    shown, and the classes in ``classes`` (e.g. of colour images made by ``label2image``)."""
    names = VOC_CLASSES if class_list is None else class_list.names
    extra = {**VOID_ENTRY, **(extra or {})}
    palette = _palette(class_list, extra)
    shown = set(int(c) for c in classes)
    h, w = _np_img(rows[0][0]).shape[:2]
    ncol = len(rows[0])
    fig, axes = plt.subplots(len(rows), ncol, figsize=(scale * ncol + 2.4, len(rows) * scale * h / w + 0.5),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j, part in enumerate(row):
            part = _np_img(part)
            if part.ndim == 2:
                shown |= set(np.unique(part).astype(int).tolist())
                part = palette[part.astype(int)]
            axes[i][j].imshow(part)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if j == 0:
                axes[i][j].set_ylabel(row_titles[i])
            if i == 0 and col_titles:
                axes[i][j].set_title(col_titles[j], fontsize=9)
    handles = _handles(sorted(c for c in shown if c < len(names)), class_list)
    handles += [Patch(color=np.asarray(extra[v][1]) / 255, label=extra[v][0]) for v in sorted(shown & set(extra))]
    fig.legend(handles=handles, loc='center right', fontsize='small', frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.1 / fig.get_figwidth(), 1))
    if path:
        save_figure(fig, path, bbox_inches='tight')
    return fig


def plot_seed_sweep(comparison, baseline=None, title=None):
    """A comparison over seeds (``teaching.seed_sweep``): left, each setting's training loss per epoch
    (mean over its finished seeds, the band from min to max); right, the final val mIoU and val pixel
    accuracy per setting as mean ± sd bars with every seed's value as a dot, and ``baseline`` (the
    all-background pixel accuracy) dashed -> the figure."""
    names = list(comparison)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw=dict(width_ratios=(1, 1.25)))
    for k, name in enumerate(names):
        runs = [r['epochs'] for r in comparison[name]['runs'].values() if r['diverged'] is None and r['epochs']]
        if not runs:
            continue
        losses = np.array([[e['loss'] for e in eps] for eps in runs])
        epochs = [e['epoch'] for e in runs[0]]
        line, = a1.plot(epochs, losses.mean(0), marker='osD^vPX*'[k % 8], label=f'{name} (n = {len(runs)})')
        a1.fill_between(epochs, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
    a1.set_xlabel('epoch')
    a1.set_ylabel('train loss (mean over seeds; band: min-max)')
    a1.set_title('training loss per setting')
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.legend(fontsize='x-small')
    x = np.arange(len(names))
    for k, (key, label) in enumerate((('val_miou', 'val mIoU'), ('test_acc', 'val pixel acc'))):
        vals = [[r['epochs'][-1][key] for r in comparison[n]['runs'].values() if r['diverged'] is None and r['epochs']]
                for n in names]
        means = [np.mean(v) if v else 0.0 for v in vals]
        sds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
        pos = x + (k - 0.5) * 0.38
        a2.bar(pos, means, 0.38, yerr=sds, capsize=3, label=f'{label} (mean ± sd)', alpha=0.8)
        for p, v in zip(pos, vals):
            a2.plot([p] * len(v), v, 'k.', ms=5, label='one seed' if k == 0 and p == pos[0] else None)
    if baseline is not None:
        a2.axhline(baseline, color='k', ls='--', lw=1, label='all-background pixel acc')
    a2.set_xticks(x)
    a2.set_xticklabels(names, rotation=20, ha='right', fontsize='small')
    a2.set_ylim(0, 1)
    a2.set_ylabel('fraction (last epoch)')
    a2.set_title('validation figures per setting, over seeds')
    a2.legend(fontsize='x-small')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_bands(bands, edges, title='accuracy by distance to a boundary (validation crops)'):
    """Pixel accuracy per distance band to the nearest class boundary, one line per model -> the figure.
    bands: {name: (right, total)} per band (``teaching.accuracy_by_distance``); edges: the band edges."""
    names = [f'{a:g}-{b:g}' if np.isfinite(b) else f'{a:g}+' for a, b in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k, (name, (right, total)) in enumerate(bands.items()):
        ax.plot(range(len(names)), right / np.maximum(total, 1), marker='osD^'[k % 4], label=name)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlabel('distance to the nearest class boundary (pixels)')
    ax.set_ylabel('pixel accuracy')
    ax.set_title(title)
    ax.legend()
    return fig



# ------------------------------------------------------------------- the notebooks' larger figures


def plot_cost_growth(sides_W, W_bytes, W_times, sides_conv, conv_times, fits):
    """Notebook 01's exercise 1, log-log over the input side n: left, the memory of the dense matrix W,
    of Conv2D's 3x3 kernel and of an im2col buffer; right, the time of one W @ x and of one Conv2D pass,
    with the power laws fitted to them. fits: [(exponent, [(n, seconds), ...])] for W @ x, then Conv2D
    (each drawn through its points' geometric mean) -> the figure."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    a1.loglog(sides_W, W_bytes, 'o-', label='dense W: 4 n$^4$ bytes')
    a1.loglog(sides_conv, [36] * len(sides_conv), 's-', label='Conv2D kernel: 36 bytes')
    a1.loglog(sides_conv, [36 * n * n for n in sides_conv], '^--', label='im2col buffer: 4·9 n$^2$ bytes')
    a1.set_title('memory (one channel, 3x3 kernel, float32)')
    a1.set_ylabel('bytes')
    a2.loglog(sides_W, W_times, 'o-', label='dense W @ x')
    a2.loglog(sides_conv, conv_times, 's-', label='Conv2D')
    for (exp, pts), style in zip(fits, ('C0:', 'C1:')):
        ns = np.array([n for n, _ in pts])
        t0 = np.exp(np.mean(np.log([t for _, t in pts])) - exp * np.mean(np.log(ns)))
        a2.loglog(ns, t0 * ns ** exp, style, lw=2, label=f'fit: n$^{{{exp:.1f}}}$')
    a2.set_title('time of one forward pass (best of repeats)')
    a2.set_ylabel('seconds')
    ticks = [n for n in sides_conv if n & (n - 1) == 0]  # the powers of two
    for a in (a1, a2):
        a.set_xlabel('input side n (pixels)')
        a.set_xticks(ticks)
        a.set_xticks([], minor=True)
        a.set_xticklabels([str(v) for v in ticks])
        a.legend(fontsize='small')
    fig.tight_layout()
    return fig


def plot_bilinear(kernel, ramp, ramp_up):
    """Notebook 02's bilinear kernel: the (k, k) kernel of one channel as an image, its row through the
    centre (a tent), and a row of values ``ramp`` with its 2x upsampling ``ramp_up`` (output pixel j lies
    at input position (j + 0.5) / 2 - 0.5) -> the figure."""
    k = kernel.shape[0]
    centre = (k - 1) // 2
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={'width_ratios': [1.2, 1, 1]})
    im = a1.imshow(kernel, cmap='viridis')
    a1.set_title(f'bilinear kernel for {(k + 1) // 2}x ({k}x{k}), channel i -> i')
    a1.set_xlabel('kernel column')
    a1.set_ylabel('kernel row')
    fig.colorbar(im, ax=a1, label='weight')
    a2.plot(np.arange(k), kernel[centre], '.-')
    a2.set_xlabel('kernel column')
    a2.set_ylabel('weight')
    a2.set_title(f'row {centre} (through the centre): a tent')
    a3.plot(np.arange(len(ramp)), ramp, 'o', ms=8, label=f'input: {len(ramp)} pixels')
    a3.plot((np.arange(len(ramp_up)) + 0.5) / 2 - 0.5, ramp_up, 'x-', label=f'2x output: {len(ramp_up)} pixels')
    a3.set_xlabel('position (in input pixels)')
    a3.set_ylabel('value')
    a3.set_title('a ramp upsampled: on the line except at the border')
    a3.legend(fontsize='small')
    fig.tight_layout()
    return fig


def upsampled_detail(inp, outp, y0, x0, d):
    """An image and its upsampling ``outp`` (s times its sides) at the same scale, and below each the
    d x d detail of the input at (y0, x0) and its s*d x s*d counterpart, outlined in red above -> the figure."""
    H, W = inp.shape[:2]
    s = outp.shape[0] // H
    fig = plt.figure(figsize=(11, 9.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[1, s], height_ratios=[s, 1.15])
    a_in, a_out = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    a_in.imshow(inp, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    a_out.imshow(outp, extent=(-0.5, s * W - 0.5, s * H - 0.5, -0.5))
    a_in.set_xlim(-0.5, W - 0.5)
    a_in.set_ylim(s * H - 0.5, -0.5)  # the same scale: both axes span s*H rows
    a_in.set_title(f'input {H}x{W} (same scale)')
    a_out.set_title(f'output {s * H}x{s * W}')
    details = [(fig.add_subplot(grid[1, 0]), inp, 1, 'input'), (fig.add_subplot(grid[1, 1]), outp, s, 'output')]
    for a, pic, k, name in details:
        a.imshow(pic[k * y0:k * (y0 + d), k * x0:k * (x0 + d)], interpolation='nearest',
                 extent=(k * x0 - 0.5, k * (x0 + d) - 0.5, k * (y0 + d) - 0.5, k * y0 - 0.5))
        a.set_title(f'{name} detail: {k * d}x{k * d} pixels (rows {k * y0}..{k * (y0 + d) - 1})')
    for a in (a_in, a_out) + tuple(a for a, *_ in details):
        a.set_xlabel('column (pixels)')
        a.set_ylabel('row (pixels)')
    a_in.add_patch(plt.Rectangle((x0, y0), d, d, fill=False, ec='red', lw=1.2))
    a_out.add_patch(plt.Rectangle((s * x0, s * y0), s * d, s * d, fill=False, ec='red', lw=1.2))
    fig.suptitle(f'bilinear {s}x upsampling by a transposed convolution (red: the detail below)')
    fig.tight_layout()
    return fig


def plot_image_sizes(sizes, chapter_crop, train_crop):
    """Notebook 03's image sizes: one marker per (height, width) and split (its area grows with the number
    of images), the region the chapter's crop keeps shaded, the training crop's sides dashed.
    sizes: {split: {(height, width): images}} -> the figure."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for split, marker, dx in (('train', 'o', -3), ('val', 's', 3)):
        (hs, ws), cs = zip(*sizes[split].keys()), list(sizes[split].values())
        ax.scatter(np.array(ws) + dx, hs, s=[12 + 3 * c for c in cs], marker=marker, alpha=0.6,
                   label=f'{split} (marker area ~ number of images)')
    xmax, ymax = ax.get_xlim()[1] + 20, ax.get_ylim()[1] + 20
    ax.fill_between([chapter_crop[1], xmax], chapter_crop[0], ymax, color='tab:green', alpha=0.12,
                    label=f'kept by the {chapter_crop[0]}x{chapter_crop[1]} crop')
    ax.axvline(train_crop[1], ls='--', c='0.4', lw=1, label=f'{train_crop[0]}x{train_crop[1]} crop (width, height)')
    ax.axhline(train_crop[0], ls='--', c='0.4', lw=1)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel('image width (pixels)')
    ax.set_ylabel('image height (pixels)')
    ax.set_title('image sizes per split')
    ax.legend(fontsize='small', loc='lower right')
    return fig


def kernel_and_predictions(kernel, kernel_title, image, label, preds):
    """A 2-D kernel (diverging colours, 0 white) beside an input image, its label and predictions
    ({title: (H, W) class map}), the maps in the classes' colours with one legend of the classes shown
    -> the figure."""
    palette = _palette()
    fig, axes = plt.subplots(1, 3 + len(preds), figsize=(3.8 * (3 + len(preds)), 3.4))
    lim = np.abs(kernel).max()
    im = axes[0].imshow(kernel, cmap='coolwarm', vmin=-lim, vmax=lim)
    axes[0].set_title(kernel_title)
    axes[0].set_xlabel('kernel column')
    axes[0].set_ylabel('kernel row')
    fig.colorbar(im, ax=axes[0], fraction=0.046, label='weight')
    maps = [np.asarray(label).astype(int)] + [np.asarray(p).astype(int) for p in preds.values()]
    panels = [(image, 'input (validation crop)'), (palette[maps[0]], 'label')]
    panels += [(palette[m], title) for m, title in zip(maps[1:], preds)]
    for ax, (pic, title) in zip(axes[1:], panels):
        ax.imshow(pic)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    legend(axes[-1], classes=np.unique(np.concatenate([m[m != 255].ravel() for m in maps])))
    fig.tight_layout()
    return fig


def score_maps_figure(image, label, scores, preds, stride=32):
    """Networks' outputs on one input: the image and its label on top, then per network ({name: (H, W)}
    ``scores`` and ``preds``) one class's score map (diverging colours, saturating at the top 1 % of
    |score|) and the predicted classes; ticks on the ``stride`` grid, one legend of the classes shown in
    the right margin -> the figure."""
    palette = _palette()
    names = list(scores)
    fig, axes = plt.subplots(1 + len(names), 2, figsize=(11, 2.8 * (1 + len(names))), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("the validation crop (both networks' input)")
    axes[0, 1].imshow(palette[np.asarray(label).astype(int)])
    axes[0, 1].set_title('its label')
    for (a_score, a_pred), name in zip(axes[1:], names):
        score = np.asarray(scores[name])
        lim = np.percentile(np.abs(score), 99)  # colours saturate at the top 1 %
        im = a_score.imshow(score, cmap='coolwarm', vmin=-lim, vmax=lim)
        a_score.set_title(f'{name} start: background score (max |score| {np.abs(score).max():.3g})', fontsize=11)
        fig.colorbar(im, ax=a_score, fraction=0.035, label='score')
        a_pred.imshow(palette[np.asarray(preds[name]).astype(int)])
        a_pred.set_title(f'{name} start: initial prediction', fontsize=11)
    for ax, row_name in zip(axes[:, 0], ['input and label'] + [f'{n} start' for n in names]):
        ax.set_ylabel(f'{row_name}\nrow (pixels)', fontsize=11)
    h, w = np.asarray(label).shape
    for ax in axes.ravel():
        ax.set_xticks(range(0, w + 1, stride))  # the grid of the network's output stride
        ax.set_yticks(range(0, h + 1, stride))
        ax.tick_params(labelsize='small')
    for ax in axes[-1]:
        ax.set_xlabel('column (pixels)')
    maps = [np.asarray(label).astype(int)] + [np.asarray(p).astype(int) for p in preds.values()]
    shown = np.unique(np.concatenate([m[m != 255].ravel() for m in maps]))
    fig.legend(handles=_handles(shown), loc='center left', bbox_to_anchor=(0.85, 0.5), fontsize='small',
               frameon=False)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    return fig


def plot_footprint(footprint, cell, stride=32):
    """Where one coarse score lands after upsampling: the (H, W) output of a one-hot score at ``cell``
    (row, column) of the coarse map, with that cell's stride x stride image block outlined -> the figure."""
    r, c = cell
    h, w = footprint.shape
    fig, ax = plt.subplots(figsize=(6, 4.2))
    im = ax.imshow(footprint, cmap='viridis')
    ax.add_patch(plt.Rectangle((stride * c - 0.5, stride * r - 0.5), stride, stride, fill=False, ec='red', lw=1.5,
                               label=f'image block of cell ({r}, {c})'))
    ax.set_xticks(range(0, w + 1, 2 * stride))
    ax.set_yticks(range(0, h + 1, 2 * stride))
    ax.set_xlabel('output column (pixels)')
    ax.set_ylabel('output row (pixels)')
    ax.set_title(f'upsampling a one-hot score at cell ({r}, {c}) of the {h // stride}x{w // stride} map')
    ax.legend(loc='lower right', fontsize='small')
    fig.colorbar(im, ax=ax, fraction=0.03, label='weight')
    return fig

describe_figures()  # in a notebook: figures' titles stored with them (alt text); nothing elsewhere
