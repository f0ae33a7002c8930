"""The key bar: which keys are enabled follows the view, without rebuilding the bar."""

import asyncio

from textual.widgets._footer import FooterKey

from inspector.app import make_app
from tests.fixtures import synthetic


def head_keys(app) -> list[FooterKey]:
    return [k for k in app.screen.query(FooterKey) if k.action.startswith("head(")]


def test_head_keys_follow_the_view_and_the_bar_is_not_rebuilt():
    async def run():
        app = make_app(synthetic.trace())
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.pause()
            keys = list(app.screen.query(FooterKey))
            heads = head_keys(app)
            assert heads and all(k.has_class("-disabled") for k in heads)  # the tokens view: no heads
            await pilot.press("a")
            await pilot.pause()
            assert all(not k.has_class("-disabled") and not k._disabled for k in head_keys(app))
            await pilot.press("question_mark", "escape", "v", "t")
            await pilot.pause()
            assert all(k.has_class("-disabled") for k in head_keys(app))
            assert list(app.screen.query(FooterKey)) == keys  # the same widgets: updated in place
    asyncio.run(run())
