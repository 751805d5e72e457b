"""The web console on a PostgreSQL register: the same pages and changes as on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from console_fixtures import OPERATOR, OPERATOR_PASSWORD, build_console_world, customize


def test_ok_the_console_reads_and_changes_a_postgresql_register(tmp_path: Path) -> None:
    console = build_console_world(tmp_path, backend="postgresql")
    try:
        devices = console.world.make_devices(2)
        asyncio.run(customize(console.world, devices[:1]))
        target = devices[1].device_id

        async def body() -> None:
            async with console.client() as client:
                assert (await client.login(OPERATOR, OPERATOR_PASSWORD)).status == 303
                overview = await client.get("/")
                assert 'id="count-customized">1<' in overview.text
                assert 'id="last-hour">1<' in overview.text
                listing = await client.get(f"/devices?q={target[:-2]}&state=listed")
                assert target in listing.text and devices[0].device_id not in listing.text
                confirm = await client.get(f"/devices/{target}/block")
                done = await client.post(
                    f"/devices/{target}/block", {"csrf": confirm.csrf, "confirm": "yes"}
                )
                assert done.status == 303
                assert "The hash chain verifies" in (await client.get("/audit")).text

        asyncio.run(body())
        assert console.world.state(target) == "blocked"
    finally:
        console.stop()
