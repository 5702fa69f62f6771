"""The latency budget's models and controller, with a simulated clock (no timing assertions)."""
import numpy as np
import pytest

from match_node import params as P
from match_node.engine.budget import FrameRecord, LatencyBudget, PathCost
from match_node.engine.costmodel import CostModel, OnlineLeastSquares, layer_features


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def true_layer_ms(n0: int, n1: int) -> float:
    a, b = n0 / 1000, n1 / 1000
    return 2.0 + 10 * (a + b) + 40 * (a * a + b * b) + 30 * a * b


def test_online_least_squares_learns_a_layer_cost():
    model = OnlineLeastSquares(4, forgetting=0.995)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n0, n1 = rng.integers(50, 2000, 2)
        model.update(layer_features(n0, n1), true_layer_ms(n0, n1) * rng.uniform(0.97, 1.03))
    for n in (100, 700, 1800):
        assert model.predict(layer_features(n, n)) == pytest.approx(true_layer_ms(n, n), rel=0.08)


def test_online_least_squares_tracks_a_change_of_device_speed():
    model = OnlineLeastSquares(4, forgetting=0.95)
    rng = np.random.default_rng(1)
    for scale in (1.0, 3.0):  # e.g. thermal throttling on a Jetson
        for _ in range(150):
            n0, n1 = rng.integers(50, 2000, 2)
            model.update(layer_features(n0, n1), scale * true_layer_ms(n0, n1))
    assert model.predict(layer_features(1000, 1000)) == pytest.approx(3 * true_layer_ms(1000, 1000), rel=0.1)


def run_layers(budget: LatencyBudget, clock: FakeClock, points: list[tuple[int, int]],
               started: float = 0.0) -> int:
    """Drive a FrameDeadline like LightGlue would; return the number of layers run."""
    deadline = budget.deadline(started)
    for layer, (n0, n1) in enumerate(points):
        if not deadline.before_layer(layer, n0, n1) and layer > 0:
            return layer
        clock.now += true_layer_ms(n0, n1)
    deadline.before_assignment(len(points) - 1, *points[-1])
    clock.now += 1.0
    deadline.finish()
    return len(points)


def trained_budget(budget_ms: float) -> tuple[LatencyBudget, FakeClock]:
    clock = FakeClock()
    # A configured threshold, as the pipeline sets it: reduced frames get a lowered one.
    budget = LatencyBudget(budget_ms=0.0, detection_threshold=0.2, clock=clock)
    for n in (128, 256, 512, 1024, 1536):  # calibration-like observations
        for _ in range(3):
            budget.cost.observe_layer(n, n, true_layer_ms(n, n))
            budget.cost.observe_assignment(n, n, 1.0)
    budget.configure(budget_ms, 95.0, 128, 1024, 320, 1024, 3)
    return budget, clock


def test_deadline_stops_at_the_last_layer_that_fits():
    budget, clock = trained_budget(100.0)
    clock.now = 50.0  # extraction used half the budget
    per_layer = true_layer_ms(1000, 1000)  # 112 ms: not even one more layer fits
    ran = run_layers(budget, clock, [(1000, 1000)] * 9, started=0.0)
    assert ran == 1  # the first layer always runs
    budget, clock = trained_budget(1000.0)
    clock.now = 300.0
    ran = run_layers(budget, clock, [(1000, 1000)] * 9, started=0.0)
    # 700 ms left: 6 layers of 112 ms = 672 ms, plus the assignment and margin -> 5 or 6.
    assert ran in (5, 6) and 300 + ran * per_layer <= 1000


def test_deadline_uses_the_pruned_point_counts():
    budget, clock = trained_budget(400.0)
    pruned = [(1000, 1000), (800, 800), (400, 400), (200, 200), (100, 100), (50, 50),
              (50, 50), (50, 50), (50, 50)]
    ran = run_layers(budget, clock, pruned)
    assert ran == 9  # shrinking layers all fit although 9 full layers would not
    assert clock.now <= 400


def test_disabled_budget_never_stops():
    budget, clock = trained_budget(0.0)
    assert run_layers(budget, clock, [(2000, 2000)] * 9) == 9


def whole_match_ms(n0: int, n1: int) -> float:
    """A matcher without layers (nearest neighbours with the epipolar filter): ~ n0 * n1."""
    return 4.0 + 60.0 * (n0 / 1000) * (n1 / 1000)


def run_whole_match(budget: LatencyBudget, clock: FakeClock, points: list[tuple[int, int]],
                    started: float = 0.0) -> int:
    """Drive a FrameDeadline as a matcher without layers does (engine/matchers.py): the whole
    match is reported as the step after the last layer."""
    deadline = budget.deadline(started)
    deadline.before_assignment(0, *points[0])
    clock.now += whole_match_ms(*points[0])
    deadline.finish()
    return 0


def simulate(budget: LatencyBudget, clock: FakeClock, frames: int, ext_ms_per_mpix: float,
             density: float, noise: float = 0.02, seed: int = 0,
             match=run_layers) -> list[tuple[int, int, float]]:
    """Frames of 640x480: extraction ~ pixels, matching by the fake layer cost (or `match`)."""
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(frames):
        settings = budget.settings()
        side = settings.max_image_side or 640
        scale = min(1.0, side / 640)
        pixels = 640 * 480 * scale * scale
        points = int(min(settings.max_keypoints, density * pixels)
                     if settings.detection_threshold is None else settings.max_keypoints)
        start = clock.now
        extract = (5 + ext_ms_per_mpix * pixels / 1e6 + 0.01 * points) * rng.uniform(1 - noise, 1 + noise)
        clock.now += extract
        ran = match(budget, clock, [(points, points)] * 9, started=start)
        total = clock.now - start
        budget.observe(FrameRecord(0.0, extract, total - extract, total, int(pixels), points,
                                   settings.max_keypoints, side), (640, 480))
        history.append((settings.max_keypoints, side, total, ran))
    return history


def test_controller_lowers_the_cap_where_matching_dominates_and_meets_the_budget():
    budget, clock = trained_budget(150.0)
    history = simulate(budget, clock, 80, ext_ms_per_mpix=20, density=0.005)  # 1536 detections
    caps = [h[0] for h in history]
    assert caps[-1] < 1024 and history[-1][1] == 640  # cap lowered, resolution kept
    late = [h[2] for h in history[40:]]
    assert max(late) <= 150.0
    # A typical frame affords the target layers; a slow one may be cut shorter.
    assert np.median([h[3] for h in history[40:]]) >= 3


def test_controller_lowers_resolution_where_extraction_dominates():
    budget, clock = trained_budget(250.0)
    history = simulate(budget, clock, 80, ext_ms_per_mpix=800, density=0.0008)  # ~250 points
    assert history[-1][1] < 640
    assert max(h[2] for h in history[40:]) <= 250.0


def test_controller_sizes_the_cap_of_a_matcher_without_layers():
    # Regression: with nearest neighbours the budget never adapted (it waited for LightGlue
    # layer timings), so the CPU preset's frames were not sized to its budget at all.
    clock = FakeClock()
    budget = LatencyBudget(budget_ms=80.0, max_keypoints=1024, max_image_side=1024,
                           clock=clock)
    history = simulate(budget, clock, 80, ext_ms_per_mpix=60, density=0.005,
                       match=run_whole_match)
    assert budget.cost.layer.count == 0 and budget.cost.assignment.count == 80
    assert history[0][2] > 80.0            # 1024 points: 27 + 67 ms
    assert history[-1][0] < 1024  # the cap lowered (matching was most of the frame)
    assert max(h[2] for h in history[40:]) <= 80.0


def test_a_held_resolution_leaves_the_cap_to_the_budget():
    # An inference engine compiles per image size: the pipeline holds the resolution by a
    # lower bound above every side, and the budget then meets an overload with the cap.
    from match_node.engine.pipeline import FIXED_SIDE
    for max_side in (1024, 0):
        budget, clock = trained_budget(250.0)
        budget.configure(250.0, 95.0, 128, 1024, FIXED_SIDE, max_side, 3)
        history = simulate(budget, clock, 60, ext_ms_per_mpix=500, density=0.005)
        assert {h[1] for h in history[1:]} == {640}  # (the first frame: size unknown)
        assert history[-1][0] < 1024
    free, clock = trained_budget(250.0)
    history = simulate(free, clock, 60, ext_ms_per_mpix=500, density=0.005)
    assert history[-1][1] < 640  # the same load, free to: the resolution goes down


def test_controller_recovers_with_headroom_and_does_not_oscillate():
    budget, clock = trained_budget(150.0)
    simulate(budget, clock, 60, ext_ms_per_mpix=20, density=0.005)
    low_cap = budget.settings().max_keypoints
    budget.configure(1000.0, 95.0, 128, 1024, 320, 1024, 3)  # budget raised at run time
    history = simulate(budget, clock, 80, ext_ms_per_mpix=20, density=0.005, seed=1)
    caps = [h[0] for h in history]
    assert caps[-1] == 1024 > low_cap
    steps = np.sign(np.diff(caps))
    steps = steps[steps != 0]
    assert np.all(steps > 0), "the cap went back and forth while recovering"


def test_steady_load_settles():
    budget, clock = trained_budget(180.0)
    history = simulate(budget, clock, 150, ext_ms_per_mpix=20, density=0.005, noise=0.05)
    caps = np.array([h[0] for h in history[60:]])
    changes = np.count_nonzero(np.diff(caps))
    reversals = np.count_nonzero(np.diff(np.sign(np.diff(caps))[np.diff(caps) != 0]))
    assert changes < 30 and reversals <= 4


def test_bounds():
    budget = LatencyBudget(budget_ms=100.0, min_keypoints=600, max_keypoints=500,
                           min_image_side=900, max_image_side=800)
    assert (budget.min_keypoints, budget.min_image_side) == (500, 800)
    budget = LatencyBudget(budget_ms=0.0, max_keypoints=700, max_image_side=0)
    assert budget.settings().max_keypoints == 700 and budget.settings().max_image_side == 0


def test_a_new_image_size_is_not_extracted_at_the_previous_size():
    # Regression: after 320x240 frames, a 741x500 frame was resized to 320 px.
    for budget_ms in (0.0, 500.0):
        budget = LatencyBudget(budget_ms=budget_ms, max_keypoints=512, max_image_side=1024)
        budget.observe(FrameRecord(0.1, 20.0, 5.0, 26.0, 320 * 240, 300, 512, 320), (320, 240))
        assert budget.settings((320, 240)).max_image_side == 320
        assert budget.settings((741, 500)).max_image_side == 741


def test_cost_model_error_quantile_is_the_safety_factor():
    cost = CostModel()
    for i in range(60):
        cost.observe_layer(500, 500, 20.0 * (1.3 if i % 10 == 0 else 1.0))
    assert 0.9 <= cost.layer_error.factor(50) < 1.1
    assert cost.layer_error.factor(99) > 1.15


def test_bounds_default_to_the_parameter_table():
    budget = LatencyBudget()
    assert (budget.budget_ms, budget.percentile, budget.target_layers) == (
        P.SPECS["latency_budget_ms"].default, P.SPECS["budget_percentile"].default,
        P.SPECS["budget_target_layers"].default)
    assert (budget.min_keypoints, budget.max_keypoints) == (
        P.SPECS["min_keypoints"].default, P.SPECS["max_keypoints"].default)
    assert (budget.min_image_side, budget.max_image_side) == (
        P.SPECS["min_image_side"].default, P.SPECS["max_image_side"].default)


def test_a_reduced_frame_keeps_the_configured_threshold_while_none_is_known():
    # Without the extractor's threshold the budget cannot lower it; with one it gives a quarter.
    for threshold, expected in ((None, None), (0.2, 0.05)):
        budget = LatencyBudget(budget_ms=100.0, detection_threshold=threshold)
        budget.observe(FrameRecord(0.1, 20.0, 5.0, 26.0, 640 * 480, 300, 1024, 640), (640, 480))
        budget.image_side = 400.0  # as _adapt would lower it
        settings = budget.settings((640, 480))
        assert settings.max_image_side == 400 and settings.detection_threshold == expected
        assert settings.max_keypoints == 300  # the full-resolution count


def path_cost(ms_per_mpix: float = 500.0, fixed_ms: float = 10.0) -> PathCost:
    """A textureless path's cost as calibration measures it: extraction at two sizes (exact
    samples, so the error factor stays at its default), a 5 ms match, a 40 ms refinement."""
    cost = PathCost()
    for w, h in ((320, 240), (640, 480), (320, 240), (640, 480)):
        cost.observe_extraction(w * h, 300, fixed_ms + ms_per_mpix * w * h / 1e6)
    cost.observe_pair(5.0, 40.0)
    return cost


def test_path_side_leaves_the_textureless_pair_its_match_and_refinement():
    budget = LatencyBudget(budget_ms=400.0, min_image_side=320, max_image_side=1024)
    cost, size = path_cost(), (640, 480)
    factor = cost.extraction_error.factor(budget.percentile)
    # Time to spare: the configured side (images are extracted as without a budget).
    assert budget.path_side(cost, size, 400.0, views=1, refining=True) == 1024
    # 150 ms left: extraction may take 150 - 45 ms; the side whose prediction fits it.
    side = budget.path_side(cost, size, 150.0, views=1, refining=True)
    fits = 640 * np.sqrt(((150 - 45) / factor - 10) / (500 * 640 * 480 / 1e6))
    assert fits - 2 <= side <= fits and side < 640
    # Both frames to extract (a transition from LightGlue), or refinement to leave room for:
    # smaller; refinement off: larger.
    assert budget.path_side(cost, size, 150.0, views=2, refining=True) < side
    assert budget.path_side(cost, size, 150.0, views=1, refining=False) > side
    # No time left: the lower bound; never below it.
    assert budget.path_side(cost, size, -50.0, views=2, refining=True) == 320
    # A slower device (the model follows it): smaller.
    assert budget.path_side(path_cost(ms_per_mpix=900.0), size, 150.0, 1, True) < side


def test_path_side_without_a_budget_or_a_known_cost_is_the_configured_side():
    budget = LatencyBudget(budget_ms=0.0, min_image_side=320, max_image_side=1024)
    assert budget.path_side(path_cost(), (640, 480), -50.0, 1, True) == 1024
    budget.configure(400.0, 95.0, 128, 1024, 320, 1024, 3)
    assert budget.path_side(PathCost(), (640, 480), -50.0, 1, True) == 1024  # not calibrated
    budget.size_textureless_paths = False
    assert budget.path_side(path_cost(), (640, 480), -50.0, 1, True) == 1024
    budget.size_textureless_paths = True
    budget.configure(400.0, 95.0, 128, 1024, 320, 0, 3)  # max_image_side 0: never resized
    assert budget.path_side(path_cost(), (640, 480), 400.0, 1, True) == 0
    assert budget.path_side(path_cost(), (640, 480), -50.0, 1, True) == 320


def test_frames_a_textureless_path_served_leave_the_settings_alone():
    """A textureless stretch (matcher 'auto': SIFT serves the frames, the extractor finds a
    handful of keypoints) must not pass for headroom: unflagged, its frames lowered the
    scene's keypoint count and the cap climbed back to 1024, so the textured frames after it
    started far over the budget. Flagged, they teach the extraction model only."""
    settled = {}
    for flagged in (False, True):
        budget, clock = trained_budget(150.0)
        simulate(budget, clock, 60, ext_ms_per_mpix=20, density=0.005)  # cap lowered, full side
        before = budget.settings()
        count = budget._full_count
        for _ in range(30):
            settings = budget.settings()
            extract = 5 + 20 * 640 * 480 / 1e6 + 0.01 * 5
            # The textureless path's extraction, match and refinement: 80 ms.
            budget.observe(FrameRecord(0.0, extract, 80.0, extract + 80.0, 640 * 480, 5,
                                       settings.max_keypoints, 640, textureless=flagged),
                           (640, 480))
        settled[flagged] = budget.settings(), budget._full_count
        assert before.max_keypoints < 1024 and before.max_image_side in (0, 640, 1024)
    assert settled[True] == (before, count)
    assert settled[False][0].max_keypoints > before.max_keypoints and settled[False][1] < 50
