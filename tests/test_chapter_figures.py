"""The chapters' figures: each draws what it was given where it belongs (the im2col window over
its column, RoIAlign's sample points where the kernels put them, a thread's number on the
element it computes) and says what is wrong with bad input."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from tinymaskrcnn.chapters import figures_detector as detector, figures_foundation as foundation, figures_gpu as gpu
from tinymaskrcnn.visualize import PALETTE, class_colour
# the shapes sample, a prediction made from it, and pyplot's figures closed after each test
from test_visualize import close_figures, png_size, prediction_from, sample  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2


# ---------------------------------------------------------------------------------------------
# Chapter 1: the tape's graph
# ---------------------------------------------------------------------------------------------

def test_draw_tape_puts_each_node_right_of_its_inputs_with_one_arrow_per_input():
    import tinymaskrcnn as tm
    from tinymaskrcnn.core.autograd import topological_order

    w = tm.Tensor(np.ones(3), requires_grad=True)
    b = tm.Tensor(np.array(0.5), requires_grad=True)
    y = ((w * w + b) ** 2).sum()                          # w feeds Mul twice: two arrows from one node
    order = topological_order(y._node)
    ax = foundation.draw_tape(order, names={id(w._node): "w", id(b._node): "b"})
    place = {t.get_text().split("\n")[0]: t.get_position() for t in ax.texts if t.get_text()}
    assert sorted(place) == ["Add", "Mul", "Pow", "Sum", "b", "w"]
    assert place["w"][0] == place["b"][0] == 0 and place["Mul"][0] == 1 and place["Add"][0] == 2
    assert place["Sum"][0] == 4
    arrows = [a for a in ax.texts if isinstance(a, matplotlib.text.Annotation) and not a.get_text()]
    assert len(arrows) == sum(len(n.fn.inputs) for n in order if n.fn is not None)


# ---------------------------------------------------------------------------------------------
# Chapter 2: im2col
# ---------------------------------------------------------------------------------------------

def test_draw_im2col_outlines_each_chosen_window_and_its_column():
    x = np.arange(1.0, 21.0).reshape(4, 5)
    padded = np.pad(x, 1)
    # im2col by brute force: column oh*Wo + ow holds the 3x3 window at (2*oh, 2*ow) of the padded plane
    cols = np.stack([padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].ravel() for i in range(2) for j in range(3)], axis=1)
    axes = foundation.draw_im2col(x, cols, kernel_size=3, stride=2, padding=1, columns=(1, 5))
    windows, outlined = axes[0].patches, axes[1].patches
    assert [(w.get_x(), w.get_y()) for w in windows] == [(2 + 0.08, 0 + 0.08), (4 + 0.14, 2 + 0.14)]
    assert [round(c.get_x()) for c in outlined] == [1, 5]
    assert len(axes[0].texts) == padded.size and len(axes[1].texts) == cols.size
    with pytest.raises(ValueError, match=r"gives an im2col matrix of shape \(9, 6\)"):
        foundation.draw_im2col(x, cols[:, :4], kernel_size=3, stride=2, padding=1)
    with pytest.raises(ValueError, match="column 6 is out of range"):
        foundation.draw_im2col(x, cols, kernel_size=3, stride=2, padding=1, columns=(6,))


# ---------------------------------------------------------------------------------------------
# Chapter 3: normalisation statistics, max pooling's routing
# ---------------------------------------------------------------------------------------------

def test_draw_channel_statistics_puts_one_point_per_plane_at_its_mean_and_std():
    values = np.random.default_rng(0).normal(2.0, 3.0, (4, 3, 5, 6))
    ax = foundation.draw_channel_statistics({"a": values, "b": values * 0})
    points = ax.collections[0].get_offsets()
    assert points.shape == (12, 2)
    np.testing.assert_allclose(points[:, 0], values.mean(axis=(2, 3)).ravel())
    np.testing.assert_allclose(points[:, 1], values.std(axis=(2, 3)).ravel())
    assert len(ax.collections) == 2
    per_channel = foundation.draw_channel_statistics({"a": values}, per_image=False).collections[0].get_offsets()
    np.testing.assert_allclose(per_channel[:, 0], values.mean(axis=(0, 2, 3)))
    with pytest.raises(ValueError, match=r"outputs\['a'\] has shape \(3, 5, 6\)"):
        foundation.draw_channel_statistics({"a": values[0]})


def test_draw_max_pool_routing_outlines_every_window_and_circles_its_maximum():
    x = np.random.default_rng(1).permutation(25).reshape(5, 5).astype(float)
    g = np.ones((2, 2))
    axes = foundation.draw_max_pool_routing(x, g, np.zeros_like(x), kernel_size=3, stride=2)
    assert len(axes) == 3
    circles = [p for p in axes[0].patches if isinstance(p, matplotlib.patches.Circle)]
    windows = [p for p in axes[0].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert len(circles) == len(windows) == 4
    for circle, (i, j) in zip(circles, np.ndindex(2, 2)):
        window = x[2 * i:2 * i + 3, 2 * j:2 * j + 3]
        a, b = np.unravel_index(np.argmax(window), window.shape)
        assert circle.center == (2 * j + b + 0.5, 2 * i + a + 0.5)
    assert len(axes[0].texts) == 25 and len(axes[1].texts) == 4
    with pytest.raises(ValueError, match=r"gives \(2, 2\) outputs"):
        foundation.draw_max_pool_routing(x, np.ones((3, 3)), x, kernel_size=3, stride=2)


# ---------------------------------------------------------------------------------------------
# Chapters 5-7: boxes, anchors, the RPN
# ---------------------------------------------------------------------------------------------

def test_draw_box_groups_colours_fills_and_points(tmp_path):
    image = detector.blank_image(40, 60)
    assert image.shape == (3, 40, 60) and np.allclose(image, 0.96)
    groups = {"a": np.array([[5.0, 5, 30, 20]]), "b": np.array([[10.0, 8, 50, 30], [0, 0, 4, 4]]),
              "a ∩ b": np.array([[10.0, 8, 30, 20]]), "none": np.zeros((0, 4))}
    points = {"p": np.array([[1.0, 2], [3, 4], [5, 6]]), "q": np.array([[10.0, 10]])}
    ax = detector.draw_box_groups(image, groups, filled=["a ∩ b"], points=points, markersize=[2, 7], title="t")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a (1)", "b (2)", "a ∩ b (1)", "none (0)", "p (3)", "q (1)"]
    polys = {c.get_label(): c for c in ax.collections}
    np.testing.assert_allclose(polys["b (2)"].get_paths()[0].vertices[:4], [[10, 8], [50, 8], [50, 30], [10, 30]])
    assert polys["a ∩ b (1)"].get_facecolor()[0][3] > 0 and len(polys["a (1)"].get_facecolor()) == 0
    assert [line.get_markersize() for line in ax.lines] == [2, 7]
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), points["p"])
    ax.figure.savefig(tmp_path / "groups.png", dpi=30)
    assert png_size(tmp_path / "groups.png") == tuple(round(s * 30) for s in ax.figure.get_size_inches())
    with pytest.raises(ValueError, match=r"filled names \['c'\] are not groups"):
        detector.draw_box_groups(image, groups, filled=["c"])


def test_draw_matrix_values_and_annotations():
    matrix = np.array([[0.0, 0.25, 1.0], [0.5, 0.75, 0.1]])
    ax = detector.draw_matrix(matrix, vmin=0, vmax=1, annotate=True, xlabel="x", ylabel="y", title="m")
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    assert ax.images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.25", "1.00", "0.50", "0.75", "0.10"]
    assert len(ax.figure.axes) == 2  # the heat map and its colour bar
    ax = detector.draw_matrix(matrix, colorbar=False, ax=plt.subplots()[1])
    assert len(ax.figure.axes) == 1 and not ax.texts
    with pytest.raises(ValueError, match="expected 2-D"):
        detector.draw_matrix(np.zeros((2, 3, 4)))


# ---------------------------------------------------------------------------------------------
# Chapters 8-10: RoIAlign, the box head, the mask head
# ---------------------------------------------------------------------------------------------

def test_draw_roi_align_marks_the_kernels_samples_and_the_shifted_box():
    X = 10.0 * np.arange(5)[:, None] + np.arange(6)[None, :]
    ax = detector.draw_roi_align(X, (1, 1, 3, 3), 2, sampling_ratio=2, aligned=True, values=True)
    box = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)][0]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (0.5, 0.5, 2.0, 2.0)  # shifted by 1/2
    filled, hollow = (c.get_offsets() for c in ax.collections)
    assert sorted(set(np.asarray(filled)[:, 0])) == [0.75, 1.25, 1.75, 2.25] and len(hollow) == 0
    assert "2×2 a bin" in ax.get_title() and len(ax.texts) == X.size
    plt.close(ax.figure)
    # legacy, partly off the map: samples at x = -2.5 lie more than a pixel outside and are hollow
    ax = detector.draw_roi_align(X, (-4, 0, 2, 2), 2, sampling_ratio=1)
    filled, hollow = (np.asarray(c.get_offsets()) for c in ax.collections)
    assert np.array_equal(np.unique(hollow[:, 0]), [-2.5]) and np.array_equal(np.unique(filled[:, 0]), [0.5])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match=r"an \(H, W\) map"):
        detector.draw_roi_align(np.zeros((1, 5, 6)), (1, 1, 3, 3), 2)


def test_draw_roi_pool_tints_torchvisions_bins():
    M = np.arange(64.0).reshape(8, 8)
    ax = detector.draw_roi_pool(M, (1.4, 1.6, 6.3, 5.2), 2)
    rects = [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches]
    # x rounds to 1..6 (bins of 3 columns), y to 2..5 (bins of 2 rows); pixel j spans [j - 1/2, j + 1/2)
    assert rects[1:] == [(0.5, 1.5, 3, 2), (3.5, 1.5, 3, 2), (0.5, 3.5, 3, 2), (3.5, 3.5, 3, 2)]
    assert rects[0] == pytest.approx((1.4, 1.6, 4.9, 3.6))  # the exact box, dashed
    plt.close(ax.figure)


def test_draw_roi_refinement_colours_by_label_and_arrows_to_refined_boxes():
    image = np.zeros((3, 40, 50), dtype=np.float32)
    rois = np.array([[2, 2, 20, 20], [5, 5, 30, 25], [10, 10, 40, 35]], dtype=np.float32)
    refined = rois + 3
    ax = detector.draw_roi_refinement(image, rois, np.array([0, 2, 2]), refined, class_names=("bg", "a", "b"))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["background (1)", "b (2)"]
    background, objects = ax.collections
    assert np.allclose(background.get_edgecolor()[0][:3], [0.6, 0.6, 0.6])
    assert np.allclose(objects.get_edgecolor()[0][:3], PALETTE[1])
    # one dashed refined box and one arrow per foreground RoI, from its centre to the refined centre
    dashed = [(p.get_x(), p.get_y()) for p in ax.patches]
    assert dashed == [(8, 8), (13, 13)]
    arrows = [(a.xyann, a.xy) for a in ax.texts]
    assert arrows == [((17.5, 15.0), (20.5, 18.0)), ((25.0, 22.5), (28.0, 25.5))]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="one box per RoI"):
        detector.draw_roi_refinement(image, rois, np.array([0, 2, 2]), refined[:2])


def test_draw_batched_nms_shifts_each_class_apart():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [1, 1, 11, 11]], dtype=np.float64)
    axes = detector.draw_batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), np.array([0, 2]))
    left, right = ([(p.get_x(), p.get_y(), p.get_linestyle()) for p in ax.patches] for ax in axes)
    assert left == [(0, 0, "-"), (2, 2, "--"), (1, 1, "-")]
    assert right == [(0, 0, "-"), (2, 2, "--"), (14, 14, "-")]   # class 1 moved by max coordinate + 1 = 13
    plt.close(axes[0].figure)


def test_draw_mask_rows_one_row_per_roi():
    image = np.zeros((3, 30, 40), dtype=np.float32)
    boxes = np.array([[2, 3, 20, 25], [10, 5, 38, 28]], dtype=np.float32)
    targets = np.random.default_rng(0).uniform(0, 1, (2, 7, 7))
    predictions = 1 - targets
    pasted = np.zeros((2, 1, 30, 40))
    pasted[0, 0, 5:20, 4:18] = 0.9
    axes = detector.draw_mask_rows(image, boxes, targets, predictions, pasted, labels=np.array([1, 3]),
                                   class_names=("bg", "a", "b", "c"))
    assert axes.shape == (2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["image crop", "target 7×7", "prediction", "pasted"]
    assert [row[0].get_ylabel() for row in axes] == ["a", "c"]
    np.testing.assert_array_equal(axes[1, 1].images[0].get_array(), targets[1])
    np.testing.assert_array_equal(axes[1, 2].images[0].get_array(), predictions[1])
    # the pasted column zooms on the box with a margin of 15 % of its longer side
    assert axes[0, 3].get_xlim() == pytest.approx((0, 20 + 0.15 * 22))
    assert axes[0, 3].get_ylim() == pytest.approx((25 + 0.15 * 22, 0))
    assert len(axes[0, 3].collections) == 1 and len(axes[1, 3].collections) == 0  # a 0.5 contour where it crosses
    plt.close(axes[0, 0].figure)
    with pytest.raises(ValueError, match="must both be"):
        detector.draw_mask_rows(image, boxes, targets, predictions[:1], pasted)


# ---------------------------------------------------------------------------------------------
# Chapter 13: a gallery of failures
# ---------------------------------------------------------------------------------------------

def test_draw_failure_gallery_crops_each_object(sample):
    image, target, _ = sample
    prediction = prediction_from(target)
    prediction["labels"] = prediction["labels"] % 3 + 1   # every detection of another class than its object
    failures = [{"image": image, "target": target, "gt": g, "prediction": prediction, "det": None if g == 0 else g,
                 "kind": "missed" if g == 0 else "bad mask", "score": 0.1} for g in range(len(target["boxes"]))]
    fig = detector.draw_failure_gallery(failures, columns=2)
    axes = fig.axes
    assert len(axes) == 2 * -(-len(failures) // 2)
    for ax, (x1, y1, x2, y2) in zip(axes, target["boxes"]):
        left, right = ax.get_xlim()
        bottom, top = ax.get_ylim()
        assert left <= x1 and right >= x2 and top <= y1 and bottom >= y2   # the object is inside its crop
        assert right - left < image.shape[2] or x2 - x1 > image.shape[2] / 2   # and the panel is a crop
    assert "missed" in axes[0].get_title()
    # outlines in the class's colour: the truth solid, the detection (said another class) dashed
    truth_box, said_box = axes[1].patches
    assert matplotlib.colors.same_color(truth_box.get_edgecolor(), class_colour(target["labels"][1]))
    assert matplotlib.colors.same_color(said_box.get_edgecolor(), class_colour(prediction["labels"][1]))
    assert truth_box.get_linestyle() == "solid" and said_box.get_linestyle() == "--"
    with pytest.raises(ValueError, match="empty"):
        detector.draw_failure_gallery([])


# ---------------------------------------------------------------------------------------------
# Chapter 15: GPU kernels
# ---------------------------------------------------------------------------------------------

def test_grid_stride_owner_is_the_loop_of_every_thread():
    for total, blocks, threads in [(36, 2, 8), (5, 1, 64), (100, 3, 7)]:
        thread, block, turn = gpu.grid_stride_owner(total, blocks, threads)
        expected_thread, expected_turn = np.full(total, -1), np.full(total, -1)
        for t in range(blocks * threads):  # what each thread's loop visits, written out
            for n, e in enumerate(range(t, total, blocks * threads)):
                expected_thread[e], expected_turn[e] = t, n
        np.testing.assert_array_equal(thread, expected_thread)
        np.testing.assert_array_equal(turn, expected_turn)
        np.testing.assert_array_equal(block, expected_thread // threads)
    with pytest.raises(ValueError, match="at least one block"):
        gpu.grid_stride_owner(10, 0, 32)


def test_draw_thread_layout_numbers_and_colours_each_element():
    ax = gpu.draw_thread_layout((2, 2, 3, 3), blocks=2, threads=8)
    numbers = [int(t.get_text()) for t in ax.texts if t.get_text().isdigit()]
    assert numbers == [e % 16 for e in range(36)]  # planes in C order, cells row by row
    assert [t.get_text() for t in ax.texts if "=" in t.get_text()] == ["k=0, c=0", "k=0, c=1", "k=1, c=0", "k=1, c=1"]
    image = ax.images[0].get_array()
    assert image.shape == (2 * 4 - 1, 2 * 4 - 1, 3)  # 3x3 panels, one blank line between
    np.testing.assert_allclose(image[0, 0], PALETTE[0])  # element 0: block 0, first turn
    np.testing.assert_allclose(image[2, 4], PALETTE[1])  # element 15 (plane 1, cell (2, 0)): block 1
    np.testing.assert_allclose(image[2, 5], PALETTE[0] + (1 - PALETTE[0]) / 4)  # element 16: block 0, turn 1
    np.testing.assert_allclose(image[3], 1.0)  # the gap is white
    assert "3 turn(s)" in ax.get_title()
    with pytest.raises(ValueError, match="2-D to 4-D"):
        gpu.draw_thread_layout((5,), 1, 32)


def test_nms_mask_words_unpacked_and_drawn():
    rng = np.random.default_rng(0)
    n = 70  # two blocks of 64
    mask = rng.integers(0, 2 ** 64, (n, 2), dtype=np.uint64)  # every bit, the 64th included
    bits = gpu.unpack_mask_words(mask)
    expected = np.array([[(int(mask[i, j // 64]) >> (j % 64)) & 1 for j in range(n)] for i in range(n)], bool)
    np.testing.assert_array_equal(bits, expected)
    ax = gpu.draw_nms_mask(mask, keep=[0, 3, 65])
    np.testing.assert_array_equal(ax.images[0].get_array(), expected)
    grey = [p for p in ax.patches if p.get_fill() and p.get_facecolor()[:3] != (1, 1, 1)]
    assert len(grey) == 1 and grey[0].get_xy() == (-0.5, 63.5)  # the one block below the diagonal, (0, 1)
    np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 1], [0, 3, 65])
    with pytest.raises(ValueError, match="uint64 words"):
        gpu.unpack_mask_words(mask.astype(np.int64))


def test_draw_atomic_adds_shows_the_counts_and_boxes():
    counts = np.zeros((5, 6), int)
    counts[1:3, 2:5] = [[1, 2, 1], [2, 4, 2]]
    ax = gpu.draw_atomic_adds(counts, [[1.5, 0.5, 4.5, 2.5], [2, 1, 3, 2]])
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(counts[counts > 0].tolist())
    assert [p.get_xy() for p in ax.patches] == [(1.5, 0.5), (2.0, 1.0)]
    assert "4 pixels shared" in ax.get_title()  # 2, 2, 4, 2
    with pytest.raises(ValueError, match=r"one \(H, W\) map"):
        gpu.draw_atomic_adds(np.zeros((1, 5, 6)))
