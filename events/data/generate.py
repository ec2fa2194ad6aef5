"""Regenerate the drops under events/data/ and the S3 events naming them (sizes, ETags, parts).

Each drop is 90 minutes of the small simulated plant (4 devices, one reading a minute: 360 rows)
with its faults, re-dated to 2026-11-20: the CSV and Parquet drops hold seed 0 from 12:00Z (alerts
on press-201 and spindle-102), the JSON Lines drop seed 1 from 13:30Z. Run from the repository
root: ``.venv/bin/python events/data/generate.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd

from zaindari.file_reading import number_parts, plan_parts
from zaindari.simulate import PlantConfig, simulate_plant

HERE = Path(__file__).resolve().parent
EVENTS = HERE.parent
BUCKET = "zaindari-rawbucket"  # the RawBucket `zaindari invoke` provisions (stack "zaindari")
PREFIX = "drops/plant-1/2026-11-20/"


def window(seed: int, start: str) -> pd.DataFrame:
    frame = simulate_plant(PlantConfig.small(seed=seed)).historian_frame()
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    last = stamps >= stamps.max() - pd.Timedelta(minutes=89)
    frame = frame.loc[last].reset_index(drop=True)
    shift = pd.Timestamp(start) - stamps[last].min()
    frame["timestamp"] = (stamps[last].reset_index(drop=True) + shift).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def main() -> None:
    csv_frame = window(0, "2026-11-20T12:00:00Z")
    jsonl_frame = window(1, "2026-11-20T13:30:00Z")
    drops = {
        "plant-1_2026-11-20_1200.csv": csv_frame.to_csv(index=False).encode(),
        "plant-1_2026-11-20_1330.jsonl": jsonl_frame.to_json(orient="records", lines=True).encode(),
    }
    parquet = io.BytesIO()
    csv_frame.to_parquet(parquet, index=False, engine="pyarrow", row_group_size=120)
    drops["plant-1_2026-11-20_1200.parquet"] = parquet.getvalue()
    facts = {}
    for name, data in drops.items():
        (HERE / name).write_bytes(data)
        facts[name] = {
            "size": len(data),
            "etag": hashlib.md5(data).hexdigest(),
        }  # single-part uploads: ETag = MD5
    print(json.dumps(facts, indent=2))
    csv = drops["plant-1_2026-11-20_1200.csv"]
    parts = number_parts(
        io.BytesIO(csv), "x.csv", plan_parts("x.csv", len(csv), part_bytes=len(csv) // 2 + 1)
    )
    print(json.dumps([p.model_dump(exclude_none=True) for p in parts]))


if __name__ == "__main__":
    main()
