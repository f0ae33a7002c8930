"""The sampling view: the funnel through the sampler's stages at one step, and the draw."""

from inspector.app import make_app
from tests.fixtures import sampling, synthetic
from tests.fixtures.screen import screen_text
from views.sampling import describe_settings, funnel


def test_the_funnel_reads_every_stage_and_the_draw():
    trace = sampling.trace()
    f = funnel(trace, 0)
    assert [s.name for s in f.stages] == ["penalties", "top_k", "typical", "top_p", "min_p", "temp", "dist"]
    assert [s.n for s in f.stages[:2]] == [len(sampling.PIECES), 12]
    assert all(a.n >= b.n for a, b in zip(f.stages, f.stages[1:]))  # a funnel: nothing comes back
    assert f.stages[0].kept_mass == 1.0 and f.stages[-1].kept_mass < f.stages[1].kept_mass < 1
    assert f.drawn == trace.generated_ids()[0] and f.drawn in f.stages[-1].ids
    assert 0 < f.p < 1 and 0 <= f.u < 1
    assert f.stages[2].setting == "off" and not f.stages[2].active  # typical_p 1


def test_greedy_keeps_one():
    f = funnel(sampling.trace(greedy=True), 1)
    assert f.stages[-2].name == "temp" and f.stages[-2].n == 1 and f.stages[-2].setting == "greedy"
    assert f.p == 1.0


def test_settings_line_names_what_is_on():
    assert describe_settings(sampling.info(sampling.PARAMS)["sampler"]) == \
        "temp 0.8 · top-k 12 · top-p 0.9 · min-p 0.15 · repeat ×1.1 over 64 · seed 42"
    assert describe_settings({"kind": "greedy", "temp": 0.0}) == "greedy"


async def test_selecting_the_sample_stop_shows_the_funnel():
    trace = sampling.trace()
    app = make_app(trace)
    async with app.run_test(size=(120, 30)) as pilot:
        app.select_stop("sample")
        await pilot.pause()
        text = screen_text(app)
        assert app.selection.view == "sampling"
        assert "sampling · step 0 · drew" in text
        for stage in ("penalties", "top_k", "top_p", "min_p", "temp", "dist"):
            assert stage in text
        assert "▶ drew" in text and "u 0." in text


async def test_a_trace_without_stages_says_so():
    app = make_app(synthetic.trace())
    async with app.run_test(size=(100, 30)) as pilot:
        app.select_stop("sample")
        await pilot.pause()
        assert "the drawn token only, not the sampler's stages" in screen_text(app)


def test_sampling_view_snapshot(snap_compare):
    async def run_before(pilot):
        pilot.app.select_stop("sample")
        await pilot.press("right")  # step 1
        await pilot.pause()

    assert snap_compare(make_app(sampling.trace()), run_before=run_before, terminal_size=(120, 30))
