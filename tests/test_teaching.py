"""d2lseg.training.teaching: the seeded comparison of notebook 04's exercise 3 and 05's exercise 5, on fake runs
whose final figures are known, so every number of the verdict can be checked."""
import pytest

import d2lseg as d2l
from d2lseg.training import teaching

# final (val_miou, test_acc) per setting and seed; 'lr 1' diverges on seed 1
FINAL = {('chapter', 0): (0.20, 0.70), ('chapter', 1): (0.24, 0.72), ('chapter', 2): (0.22, 0.71),
         ('lr 0.01', 0): (0.05, 0.60), ('lr 0.01', 1): (0.06, 0.61), ('lr 0.01', 2): (0.07, 0.66),
         ('momentum', 0): (0.23, 0.74), ('momentum', 1): (0.25, 0.75), ('momentum', 2): (0.21, 0.73),
         ('lr 1', 0): (0.01, 0.60), ('lr 1', 2): (0.02, 0.60)}
SETTINGS = {'chapter': {}, 'lr 0.01': {'lr': 0.01}, 'momentum': {'momentum': 0.9}, 'lr 1': {'lr': 1.0}}


def fake_train(calls):
    def train(recipe, callbacks):
        name = {0.01: 'lr 0.01', 1.0: 'lr 1'}.get(recipe.lr, 'momentum' if recipe.momentum else 'chapter')
        calls.append((name, recipe.seed, recipe.lr, recipe.momentum))
        if (name, recipe.seed) not in FINAL:
            return [{'epoch': 1, 'loss': 3.0, 'test_acc': 0.5, 'val_miou': 0.0}], 'the loss became nan', None
        miou, acc = FINAL[name, recipe.seed]
        return [{'epoch': 1, 'loss': 2.0, 'test_acc': 0.5, 'val_miou': 0.0},
                {'epoch': 2, 'loss': 1.0 + miou, 'test_acc': acc, 'val_miou': miou}], None, (name, recipe.seed)
    return train


@pytest.fixture
def comparison():
    calls = []
    base = d2l.Recipe(crop=(64, 96), batch_size=8, epochs=2, pretrained=False)
    kept = {}
    out = teaching.seed_sweep(base, SETTINGS, seeds=(0, 1, 2), train=fake_train(calls), say=lambda s: None, kept=kept)
    assert kept == {n: (n, 0) for n in SETTINGS}                           # the first seed's runs
    # every setting with every seed, the base recipe's other fields untouched
    assert [(c[0], c[1]) for c in calls] == [(n, s) for n in SETTINGS for s in (0, 1, 2)]
    return out


def test_seed_sweep_records_every_seed_and_why_a_run_diverged(comparison):
    assert list(comparison) == list(SETTINGS)
    assert comparison['lr 1']['changes'] == {'lr': 1.0}
    assert comparison['lr 1']['runs'][1]['diverged'] == 'the loss became nan'
    assert teaching.finals(comparison, 'lr 1') == {0: 0.01, 2: 0.02}
    assert teaching.finals(comparison, 'chapter', 'test_acc') == {0: 0.70, 1: 0.72, 2: 0.71}


def test_summary_mean_sd_range(comparison):
    st = teaching.summary(comparison)
    assert st['chapter']['mean'] == pytest.approx(0.22) and st['chapter']['sd'] == pytest.approx(0.02)
    assert st['chapter']['range'] == pytest.approx(0.04) and st['chapter']['n'] == 3
    assert st['lr 1']['n'] == 2 and st['lr 1']['diverged'] == [1]


def test_spread_is_measured_and_says_where_from(comparison):
    st = teaching.summary(comparison)
    spread, source = teaching.measured_spread(st, ['chapter', 'momentum'])
    assert spread == pytest.approx(0.04) and '(momentum: 0.210 to 0.250, n = 3)' in source
    spread, source = teaching.measured_spread(st, ['chapter', 'lr 0.01', 'momentum'])
    assert spread == pytest.approx(0.04)
    band = {'preset': 'regression', 'seeds': [0, 1], 'judged_epochs': [6, 7],
            'judged': {'val_miou': {'min': 0.1, 'max': 0.25}}}
    spread, source = teaching.band_spread(band)
    assert spread == pytest.approx(0.15) and 'regression' in source and '0.100 to 0.250' in source


def test_verdict_names_runs_below_baseline_and_calls_ties_from_the_spread(comparison):
    lines = teaching.verdict(comparison, 'chapter', baseline=0.65)
    text = '\n'.join(lines)
    # at or below 0.65: lr 0.01 seeds 0 and 1 (0.60, 0.61), lr 1's two finished seeds (0.60)
    assert lines[0].endswith('lr 0.01 [seed 0]; lr 0.01 [seed 1]; lr 1 [seed 0]; lr 1 [seed 2]')
    # the largest seed range among all settings: momentum's, 0.21 to 0.25
    assert 'tie margin: 0.040' in text
    assert 'momentum: val mIoU 0.230 ± 0.020 against 0.220 ± 0.020 for chapter: TIE (+0.010, inside' in text
    assert 'lr 0.01: val mIoU 0.060 ± 0.010 against 0.220 ± 0.020 for chapter: WORSE (-0.160)' in text
    assert 'lr 1: val mIoU 0.015 ± 0.007' in text and 'WORSE' in text.split('lr 1: ')[-1]
    # with a stored band's wider spread, the momentum setting is still a tie and lr 0.01 still worse
    lines = teaching.verdict(comparison, 'chapter', 0.65, spread=(0.15, 'a band'))
    assert 'tie margin: 0.150, a band' in lines[1] and 'WORSE (-0.160)' in '\n'.join(lines)
    lines = teaching.verdict(comparison, 'chapter', 0.65, spread=(0.2, 'a wider band'))
    assert lines[2].startswith('lr 0.01') and 'TIE (-0.160' in lines[2]


def test_compare_and_best(comparison):
    st = teaching.summary(comparison)
    assert teaching.compare(st, 'momentum', 'chapter', 0.005) == ('better', pytest.approx(0.01))
    assert teaching.compare(st, 'momentum', 'chapter', 0.04)[0] == 'tie'
    assert teaching.best(comparison) == 'momentum'
    rows = teaching.table(comparison)
    assert rows[1].split()[:2] == ['chapter', '3'] and '0.220 ± 0.020' in rows[1] and rows[4].split()[2] == '2'


def test_every_seed_diverged_is_said(comparison):
    for r in comparison['lr 1']['runs'].values():
        r['diverged'] = 'nan'
    st = teaching.summary(comparison)
    assert st['lr 1']['mean'] is None and teaching.compare(st, 'lr 1', 'chapter', 0.1) == ('diverged', None)
    assert 'lr 1: every seed diverged' in teaching.verdict(comparison, 'chapter', 0.65)
    assert 'diverged' in teaching.table(comparison)[4]


def test_plot_seed_sweep_draws_means_and_every_seed(comparison):
    from d2lseg.fcn.viz import plot_seed_sweep
    fig = plot_seed_sweep(comparison, baseline=0.65, title='t')
    a1, a2 = fig.axes
    assert [t.get_text() for t in a2.get_xticklabels()] == list(SETTINGS)
    bars = [p.get_height() for p in a2.patches]
    assert bars[:4] == pytest.approx([0.22, 0.06, 0.23, 0.015])          # mean val mIoU per setting
    dots = [line for line in a2.lines if line.get_marker() == '.']
    assert sum(len(d.get_xdata()) for d in dots) == 2 * 11                # every finished seed, both figures
    assert any(line.get_linestyle() == '--' and line.get_ydata()[0] == 0.65 for line in a2.lines)
    assert len(a1.lines) == 4 and a1.get_xlabel() == 'epoch'


def test_a_baseline_per_seed_judges_each_run_by_its_own_crops(comparison):
    below = teaching.below_baseline(comparison, {0: 0.5, 1: 0.72, 2: 0.5})
    assert below == ['chapter [seed 1]', 'lr 0.01 [seed 1]']           # 0.72 <= 0.72, 0.61 <= 0.72
    line = teaching.verdict(comparison, 'chapter', {0: 0.5, 1: 0.72, 2: 0.5})[0]
    assert '0.500 (seed 0), 0.720 (seed 1), 0.500 (seed 2)' in line and line.endswith('chapter [seed 1]; lr 0.01 [seed 1]')


def test_margin_line_gives_each_seeds_distance_to_its_floor(comparison):
    # chapter ends at 0.70, 0.72, 0.71 (seeds 0-2); 'lr 1' diverged on seed 1; every run of 'never' diverged
    line = teaching.margin_line(comparison, 'chapter', {0: 0.65, 1: 0.72, 2: 0.60})
    assert line == 'chapter: val pixel acc minus its floor: +0.050 (seed 0), +0.000 (seed 1), +0.110 (seed 2); smallest +0.000'
    assert teaching.margin_line(comparison, 'lr 1', 0.62).endswith('-0.020 (seed 0), -0.020 (seed 2); smallest -0.020')
    never = {'never': {'changes': {}, 'runs': {0: {'epochs': [], 'diverged': 'nan'}}}}
    assert teaching.margin_line(never, 'never', 0.6) == 'never: no finished run, no margin over the floor'


def test_baselines_count_background_pixels(tmp_path):
    import numpy as np
    from mxnet import nd
    from d2lseg.data.images import read_label_indices
    from d2lseg.data.synthetic import make_synthetic_voc
    import os
    voc = make_synthetic_voc(str(tmp_path), n_train=2, n_val=3, sizes=((128, 192),), progress=False)
    with open(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt')) as f:
        labels = [read_label_indices(os.path.join(voc, 'SegmentationClass', n + '.png'), False)
                  for n in f.read().split()]
    hist = sum(np.bincount(lab.ravel(), minlength=21)[:21] for lab in labels)
    counts, share = teaching.split_counts(voc)
    assert counts.tolist() == hist.tolist() and share == hist[0] / hist.sum()
    y = nd.array([[[0, 0, 255], [3, 0, 1]]])
    assert teaching.loader_background([(None, y), (None, y)]) == (6, 10)
    recipe = d2l.Recipe(crop=(64, 96), max_images=None, seed=0)
    b0 = teaching.crops_baseline(recipe, voc)
    crops = d2l.VOCSegDataset(False, (64, 96), voc, seed=0, verbose=False)
    ys = [crops[i][1].asnumpy() for i in range(len(crops))]
    assert b0 == sum((y == 0).sum() for y in ys) / sum((y != 255).sum() for y in ys) and 0 < b0 < 1


def test_boundary_distance_and_bands():
    import numpy as np
    lab = np.zeros((6, 8), np.uint8)
    lab[:, 4:] = 1                                 # a vertical class change between columns 3 and 4
    d = teaching.boundary_distance(lab.copy())
    # OpenCV's 3x3 L2 mask: 0.955 per horizontal step, from the edge at column 4 (where the class changes)
    assert d[0].tolist() == pytest.approx([0.955 * k for k in (4, 3, 2, 1, 0, 1, 2, 3)], abs=1e-3)
    assert np.isinf(teaching.boundary_distance(np.zeros((2, 2), np.uint8))).all()
    pred = lab.copy()
    pred[:, 4] = 0                                 # wrong exactly at the boundary column
    right, total = teaching.accuracy_by_distance([pred], [lab], (0, 1, 2, np.inf))
    assert total.tolist() == [18, 12, 18] and right.tolist() == [12, 12, 18]   # columns 3-5 | 2, 6 | 0, 1, 7
    lab[0, 0] = 255                                # void: not scored, and a boundary itself
    right, total = teaching.accuracy_by_distance([pred], [lab], (0, 1, 2, np.inf))
    assert total.sum() == 47


def test_look_for_states_the_figures_facts():
    import numpy as np
    lab = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = np.array([[0, 0, 0, 1], [0, 3, 0, 1]])
    s = teaching.look_for([pred], [lab])
    # 7 labelled pixels, 5 right; aeroplane (1) taken for background twice, 2 of its 4 pixels
    assert s == ('What to look for: 71% of the labelled pixels are right; its most frequent mistake is aeroplane '
                 'taken for background (2 pixels, 50% of the aeroplane pixels); the predictions use 2 classes '
                 'where the labels have 2.')
    assert 'no mistake' in teaching.look_for([lab], [lab])
    s = teaching.edge_sentence({'fcn32s': 0.5, 'fcn8s': 0.6}, {'fcn32s': 0.8, 'fcn8s': 0.7})
    assert 'fcn8s is the most accurate (0.600)' in s and 'fcn32s the least (0.500)' in s
    assert 'fcn32s +0.300, fcn8s +0.100' in s


def test_plot_bands_one_line_per_model():
    import numpy as np
    from d2lseg.fcn.viz import plot_bands
    fig = plot_bands({'a': (np.array([1., 2.]), np.array([2., 4.])), 'b': (np.array([0., 4.]), np.array([0., 4.]))},
                     (0, 2, np.inf))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ['0-2', '2+']
    assert [list(line.get_ydata()) for line in ax.lines] == [[0.5, 0.5], [0.0, 1.0]]
    assert ax.get_legend() is not None and ax.get_xlabel().startswith('distance')


def test_figure_description_is_title_then_panels():
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import figure_description
    fig, (a, b) = plt.subplots(1, 2)
    assert figure_description(fig) == 'a figure of 2 panel(s) without titles'
    a.set_title('loss')
    assert figure_description(fig) == 'Panels: loss'
    b.set_title('mIoU')
    fig.suptitle('exercise 3')
    assert figure_description(fig) == 'exercise 3. Panels: loss; mIoU'
    plt.close(fig)


def test_dtype_lines_give_the_difference_speed_and_a_verdict_from_the_spread():
    f32 = [{'val_miou': 0.10, 'time': 30.0}, {'val_miou': 0.20, 'time': 30.0}]
    b16 = [{'val_miou': 0.12, 'time': 20.0}, {'val_miou': 0.23, 'time': 20.0}]
    lines = teaching.dtype_lines(f32, b16, 0.04, 'seeds here')
    assert lines[0].endswith('float32 0.200, bfloat16 0.230 (+0.030)')
    assert 'float32 60.0 s, bfloat16 40.0 s (bfloat16 1.50x the speed)' in lines[1]
    assert lines[2] == 'verdict: bfloat16 TIE against float32 (0.030 inside the tie margin 0.040, seeds here)'
    assert 'WORSE' in teaching.dtype_lines(f32, [{'val_miou': 0.1, 'time': 1.0}], 0.04, 'x')[2]
    assert 'TIE' in teaching.dtype_lines(f32, b16, None, 'no spread measured')[2]


# ------------------------------------------------------------------- the notebooks' larger figures (d2lseg.fcn.viz)


def test_plot_cost_growth_draws_memory_time_and_the_fitted_power_laws():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import plot_cost_growth
    sides_W, sides_conv = [8, 16, 32], [8, 16, 32, 48, 64]
    W_times = [1e-5 * (n / 8) ** 4 for n in sides_W]
    fig = plot_cost_growth(sides_W, [4 * n ** 4 for n in sides_W], W_times, sides_conv, [1e-4] * 5,
                           fits=[(4.0, list(zip(sides_W, W_times))), (0.0, [(n, 1e-4) for n in sides_conv])])
    mem, tm = fig.axes
    assert [list(line.get_ydata()) for line in mem.lines] == [[16384, 262144, 4194304], [36] * 5,
                                                              [36 * n * n for n in sides_conv]]
    assert len(tm.lines) == 4 and [line.get_label() for line in tm.lines[2:]] == ['fit: n$^{4.0}$', 'fit: n$^{0.0}$']
    assert np.allclose(tm.lines[2].get_ydata(), W_times)        # an exact n^4 law: the fit goes through every point
    assert np.allclose(tm.lines[3].get_ydata(), 1e-4)
    assert [t.get_text() for t in tm.get_xticklabels()] == ['8', '16', '32', '64']   # the powers of two only
    assert mem.get_xscale() == tm.get_yscale() == 'log'
    plt.close(fig)


def test_plot_bilinear_shows_the_kernel_its_tent_and_a_ramp():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.ops import bilinear_kernel
    from d2lseg.fcn.viz import plot_bilinear
    k = bilinear_kernel(1, 1, 8)[0, 0].asnumpy()
    ramp, up = np.arange(4.0), np.array([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
    fig = plot_bilinear(k, ramp, up)
    image, tent, line = fig.axes[:3]
    assert image.images[0].get_array().shape == (8, 8) and image.get_title().startswith('bilinear kernel for 4x (8x8)')
    assert tent.get_title().startswith('row 3') and np.allclose(tent.lines[0].get_ydata(), k[3])
    assert list(line.lines[0].get_xdata()) == [0, 1, 2, 3]
    assert list(line.lines[1].get_xdata()) == [-0.25, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25]   # (j + 0.5) / 2 - 0.5
    plt.close(fig)


def test_upsampled_detail_shows_both_images_at_one_scale_and_the_detail():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import upsampled_detail
    inp = np.random.RandomState(0).rand(20, 30, 3)
    outp = inp.repeat(2, 0).repeat(2, 1)
    fig = upsampled_detail(inp, outp, y0=4, x0=6, d=5)
    a_in, a_out, d_in, d_out = fig.axes
    assert a_in.get_ylim() == a_out.get_ylim() == (39.5, -0.5)           # both span 2H rows
    assert [a.get_title() for a in (a_in, a_out)] == ['input 20x30 (same scale)', 'output 40x60']
    assert np.array_equal(d_in.images[0].get_array(), inp[4:9, 6:11])
    assert np.array_equal(d_out.images[0].get_array(), outp[8:18, 12:22])
    assert d_out.get_title() == 'output detail: 10x10 pixels (rows 8..17)'
    assert a_out.patches[0].get_xy() == (12, 8) and a_out.patches[0].get_width() == 10
    plt.close(fig)


def test_plot_image_sizes_one_marker_per_size_and_the_crops():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import plot_image_sizes
    sizes = {'train': {(128, 192): 5, (320, 480): 2}, 'val': {(160, 224): 1}}
    fig = plot_image_sizes(sizes, (320, 480), (64, 96))
    ax = fig.axes[0]
    train, val = ax.collections[:2]
    assert np.array_equal(train.get_offsets(), [[189, 128], [477, 320]])     # (width - 3, height)
    assert list(train.get_sizes()) == [27, 18] and np.array_equal(val.get_offsets(), [[227, 160]])
    labels = ax.get_legend_handles_labels()[1]
    assert 'kept by the 320x480 crop' in labels and '64x96 crop (width, height)' in labels
    assert [line.get_xdata()[0] for line in ax.lines[:1]] == [96] and ax.lines[1].get_ydata()[0] == 64
    plt.close(fig)


def test_kernel_and_predictions_colours_maps_and_lists_the_classes_shown():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import kernel_and_predictions
    from d2lseg.data.palette import VOC_COLORMAP
    label = np.array([[0, 0], [15, 255]])
    fig = kernel_and_predictions(np.array([[-2.0, 1.0], [0.0, 0.5]]), 'k', np.zeros((2, 2, 3)), label,
                                 {'a': np.array([[0, 3], [3, 3]]), 'b': np.zeros((2, 2))})
    kern, _, lab, a, b = fig.axes[:5]
    assert kern.images[0].get_clim() == (-2.0, 2.0)                        # symmetric around 0
    assert [ax.get_title() for ax in (lab, a, b)] == ['label', 'a', 'b']
    assert list(lab.images[0].get_array()[1, 0]) == list(VOC_COLORMAP[15])
    assert list(a.images[0].get_array()[0, 1]) == list(VOC_COLORMAP[3])
    assert [t.get_text() for t in b.get_legend().get_texts()] == ['background', 'bird', 'person']   # void not listed
    plt.close(fig)


def test_score_maps_figure_one_row_per_network_and_the_stride_grid():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.data.palette import VOC_COLORMAP
    from d2lseg.fcn.viz import score_maps_figure
    score = np.linspace(-1, 1, 64 * 96).reshape(64, 96)
    fig = score_maps_figure(np.zeros((64, 96, 3)), np.full((64, 96), 7), {'a': score, 'b': 3 * score},
                            {'a': np.zeros((64, 96)), 'b': np.full((64, 96), 2)})
    axes = [ax for ax in fig.axes if ax.images and ax.get_xlabel() != 'score' and ax.get_ylabel() != 'score']
    assert len(axes) == 6                                                   # image, label, then 2 per network
    assert [ax.get_title()[:27] for ax in axes[2::2]] == ['a start: background score (', 'b start: background score (']
    assert axes[4].images[0].get_clim() == pytest.approx((-2.97, 2.97), abs=0.005)   # 99th percentile of |3 score|
    assert list(axes[1].images[0].get_array()[0, 0]) == list(VOC_COLORMAP[7])
    assert list(axes[5].images[0].get_array()[0, 0]) == list(VOC_COLORMAP[2])
    assert list(axes[0].get_xticks()) == [0, 32, 64, 96] and list(axes[0].get_yticks()) == [0, 32, 64]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['background', 'bicycle', 'car']
    plt.close(fig)


def test_plot_footprint_outlines_the_cells_block():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import plot_footprint
    footprint = np.zeros((320, 480))
    footprint[112:176, 208:272] = 1
    fig = plot_footprint(footprint, (4, 7))
    ax = fig.axes[0]
    box = ax.patches[0]
    assert (box.get_xy(), box.get_width(), box.get_height()) == ((223.5, 127.5), 32, 32)
    assert ax.get_title() == 'upsampling a one-hot score at cell (4, 7) of the 10x15 map'
    assert list(ax.get_xticks()) == list(range(0, 481, 64)) and list(ax.get_yticks()) == list(range(0, 321, 64))
    assert ax.images[0].get_array().sum() == 64 * 64
    plt.close(fig)


def test_best_window_and_find_window():
    import numpy as np
    mask = np.zeros((10, 12), bool)
    mask[2:6, 5:9] = True                                                   # a 4x4 square
    assert teaching.best_window(mask, 4) == (1.0, 2, 5)
    share, y, x = teaching.best_window(mask, 6)
    assert share == pytest.approx(16 / 36) and (y, x) == (0, 3)          # the first window holding all of it
    assert teaching.best_window(mask, 11) == (0.0, 0, 0) and teaching.best_window(~mask & False, 2) == (0.0, 0, 0)
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    half = np.zeros((10, 12), np.uint8)
    half[0:2, 0:1] = 1                                                      # at most 2 of 4 pixels of a 2x2 window
    items = [('a', img, half), ('b', img, mask.astype(np.uint8)), ('c', None, None)]
    share, window = teaching.find_window(items, lambda im, lab: lab == 1, 2)
    assert share == 1.0 and np.array_equal(window, img[2:4, 5:7])        # stops at 'b': 'c' is never read
    assert teaching.find_window(items[:1], lambda im, lab: lab == 1, 2)[0] == 0.5
    assert teaching.find_window(items[:1], lambda im, lab: lab == 7, 2) == (0.0, None)


def test_band_lines_say_what_the_band_holds():
    """Notebook 06 prints these: the data, the recipe, the runs per seed, each machine once, the judged ranges."""
    import json
    import os
    import d2lseg
    with open(os.path.join(os.path.dirname(d2lseg.__file__), 'baselines', 'regression-band.json')) as f:
        band = json.load(f)
    band['runs'] = band['runs'][:3]
    for run, seed in zip(band['runs'], (4, 0, 4)):
        run['recipe'] = dict(run['recipe'], seed=seed)
    band['runs'][2]['environment'] = band['runs'][0]['environment']
    band['judged']['val_miou'] = {'min': 0.1, 'max': 0.25, 'mean': 0.2, 'sd': 0.05}
    lines = teaching.band_lines(band)
    assert lines[0] == (f"data: a synthetic set of {band['synth']['n_train']} training and {band['synth']['n_val']} "
                        f"validation scenes (seed {band['synth']['seed']})")
    assert lines[1] == 'recipe: d2lseg train ' + ' '.join(band['train'])
    assert lines[2] == '3 runs; runs per seed: seed 0: 1, seed 4: 2'
    machines = lines[4:lines.index(next(line for line in lines if line.startswith('judged:')))]
    assert len(machines) == len({json.dumps(r['environment'], sort_keys=True) for r in band['runs']}) <= 2
    assert all(m.startswith('   ') for m in machines)
    assert lines[-1] == f"  val_miou   0.1000-0.2500  mean 0.2000 +- 0.0500  margin {band['margin']['val_miou']}"
    assert len(lines) == 4 + len(machines) + 1 + 4


def test_plot_scatter_draws_each_partial_product_and_the_sum():
    import numpy as np
    from matplotlib import pyplot as plt
    from d2lseg.fcn.viz import plot_scatter
    X, K = np.array([[1., 2.]]), np.array([[1., 10.]])
    parts = [((0, 0), np.array([[1., 10., 0.]]), np.array([[True, True, False]])),
             ((0, 1), np.array([[0., 2., 20.]]), np.array([[False, True, True]]))]
    fig = plot_scatter(X, K, {1: (parts, np.array([[1., 12., 20.]]))})
    assert len(fig.axes) == 5                                              # input, kernel, 2 copies, sum
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ['input u (1x2)', 'kernel K (1x2)', 'u[0,0]·K = 1·K', '+ u[0,1]·K = 2·K', '= output 1x3']
    assert [t.get_text() for t in fig.axes[-1].texts] == ['1', '12', '20']
    assert fig.axes[0].get_ylabel() == 'stride 1'
    plt.close(fig)
