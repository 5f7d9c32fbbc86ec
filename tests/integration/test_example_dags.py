"""Every example DAG runs with ``dag.test()`` against the emulator over real HTTP; bad input never
reaches the API; the key never reaches the metadata database."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import DAG
from PIL import Image

from airflow_vibedream.emulator import EmulatorServer
from airflow_vibedream.emulator.imaging import sample_image
from airflow_vibedream.jobs.ledger.documents import LEDGER_DIR
from tests.conftest import TEST_KEY, MotoS3, connection_json, emulator_stats

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"
#: Examples that need a real Airflow (an asset watcher on a queue has no dag.test()): each is run by
#: the end-to-end test named here instead.
RUN_END_TO_END = {"example_vibedream_event_driven.py": "tests/e2e/test_event_driven.py"}


def load_dag(path: Path) -> DAG:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [value for value in vars(module).values() if isinstance(value, DAG)]
    assert len(dags) == 1, f"{path.name} should define one DAG"
    return dags[0]


def local_images(output_dir: Path) -> list[tuple[int, int]]:
    sizes = []
    for path in output_dir.rglob("*"):
        if path.is_file() and path.suffix != ".jsonl" and LEDGER_DIR not in path.parts:
            with Image.open(path) as image:
                sizes.append(image.size)
    return sizes


def s3_images(s3: MotoS3, prefix: str) -> list[tuple[int, int]]:
    client = s3.client()
    return [
        Image.open(io.BytesIO(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())).size
        for key in s3.keys(prefix)
        if f"/{LEDGER_DIR}/" not in key
    ]


def example_case(
    dag_id: str, emulator: EmulatorServer, s3: MotoS3, output_dir: Path
) -> tuple[dict[str, Any], Callable[[], list[tuple[int, int]]], int, int]:
    """Each example's offline run_conf, where its images land, their long edge, and how many jobs it
    submits. A new example must be added here to be tested."""
    if dag_id == "example_vibedream_upscale":
        conf = {
            "image": f"{emulator.base_url}/samples/320x240.png",
            "target_resolution": "2k",
            "output_format": "jpeg",
            "output_path": str(output_dir),
        }
        return conf, lambda: local_images(output_dir), 2048, 1
    if dag_id == "example_vibedream_dataset_prep":
        conf = {"sample_base": emulator.base_url, "count": 4, "output_path": str(output_dir)}
        return conf, lambda: local_images(output_dir), 2048, 4
    if dag_id == "example_vibedream_s3":
        s3.client().put_object(Bucket=s3.bucket, Key="raw/example.png", Body=sample_image(320, 240, "PNG"))
        conf = {
            "image": f"s3://{s3.bucket}/raw/example.png",
            "output_path": f"s3://{s3.bucket}/example-out",
            "target_resolution": "4k",
        }
        return conf, lambda: s3_images(s3, "example-out/"), 3840, 1
    raise AssertionError(f"no offline run_conf for the example DAG {dag_id}: add one")


@pytest.mark.parametrize(
    "name", sorted(p.name for p in EXAMPLES.glob("example_*.py") if p.name not in RUN_END_TO_END)
)
def test_example_dag_runs_against_the_emulator(
    name: str,
    dags_folder: Path,
    airflow_db: Path,
    vibedream_conn: EmulatorServer,
    moto_s3: MotoS3,
    tmp_path: Path,
) -> None:
    dag = load_dag(dags_folder / name)
    conf, images, long_edge, submissions = example_case(dag.dag_id, vibedream_conn, moto_s3, tmp_path)
    run = dag.test(run_conf=conf)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    stats = emulator_stats(vibedream_conn.base_url)
    assert stats["accepted_submissions"] == submissions
    assert stats.get("outputs_requests_with_authorization", 0) == 0
    sizes = images()
    assert len(sizes) == submissions and all(max(size) == long_edge for size in sizes)
    assert TEST_KEY.encode() not in airflow_db.read_bytes()


def test_the_dataset_recipe_pays_once_and_hands_the_same_split_downstream(
    dags_folder: Path, airflow_db: Path, vibedream_conn: EmulatorServer, moto_s3: MotoS3, tmp_path: Path
) -> None:
    """A local folder (nested) to a dataset folder, twice: the second run pays nothing and the
    training task gets the same train/validation split."""
    source = tmp_path / "raw"
    for i in range(6):
        folder = source / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img {i}.png").write_bytes(sample_image(40 + i, 30, "PNG"))
    dag = load_dag(dags_folder / "example_vibedream_dataset_prep.py")
    conf = {
        "source": str(source),
        "staging_path": f"s3://{moto_s3.bucket}/recipe-staging",
        "output_path": str(tmp_path / "dataset"),
        "validation_percent": 50,
    }
    splits = []
    for _ in range(2):
        run = dag.test(run_conf=conf)
        assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
        [split] = [ti for ti in run.get_task_instances() if ti.task_id == "split"]
        splits.append(split.xcom_pull(task_ids="split"))
    assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == 6  # the second run: 0
    assert (splits[0]["cost_cents"], splits[1]["cost_cents"]) == (12, 0)
    assert [splits[0][k] for k in ("train", "validation")] == [splits[1][k] for k in ("train", "validation")]
    assert sorted(splits[0]["train"] + splits[0]["validation"]) == sorted(
        f"{'cats' if i % 2 else 'dogs'}/img {i}.png" for i in range(6)
    )
    assert moto_s3.keys("recipe-staging/") == []  # staged copies deleted


def test_examples_run_end_to_end_have_their_test() -> None:
    root = EXAMPLES.parent
    for name, test in RUN_END_TO_END.items():
        assert (EXAMPLES / name).exists() and name.removesuffix(".py") in (root / test).read_text()


@pytest.fixture
def bad_input_dag(dags_folder: Path) -> DAG:
    return load_dag(dags_folder / "vibedream_bad_input.py")


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"target_resolution": "3k"}, "target_resolution"),
        ({"output_format": "gif"}, "output_format"),
        ({"image": "not-a-url"}, "image"),
    ],
)
def test_templated_bad_input_fails_naming_the_field_with_zero_requests(
    airflow_db: Path,
    bad_input_dag: DAG,
    vibedream_conn: EmulatorServer,
    conf: dict[str, str],
    field: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_conf = {
        "image": "https://example.com/a.jpg",
        "target_resolution": "2k",
        "output_format": "png",
        **conf,
    }
    run = bad_input_dag.test(run_conf=run_conf)
    assert run.state == "failed"
    output = capsys.readouterr().out + caplog.text
    assert f"{field} must be" in output
    assert emulator_stats(vibedream_conn.base_url).get("requests", 0) == 0


def test_no_api_key_anywhere_fails_naming_the_field_with_zero_requests(
    airflow_db: Path,
    bad_input_dag: DAG,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_VIBEDREAM_DEFAULT", connection_json(emulator.base_url, api_key=None))
    monkeypatch.delenv("VIBEDREAM_API_KEY", raising=False)
    run = bad_input_dag.test(
        run_conf={"image": "https://example.com/a.jpg", "target_resolution": "2k", "output_format": "png"}
    )
    assert run.state == "failed"
    output = capsys.readouterr().out + caplog.text
    assert "No VibeDream API key: set the 'API Key' (password) field" in output
    assert emulator_stats(emulator.base_url).get("requests", 0) == 0


def test_resume_degrades_cleanly_where_airflow_has_no_task_state_store(
    airflow_db: Path,
    vibedream_conn: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """On every supported Airflow the upscale runs once and succeeds. Without ``output_path`` (no
    ledger) below 3.3 (no task_state_store) the task log says a retry could not reconnect; with an
    ``output_path`` the ledger there is what a retry reconnects through, so no such warning."""
    from airflow import __version__ as airflow_version
    from packaging.version import Version

    spec = importlib.util.spec_from_file_location(
        "vibedream_resume_dags", Path(__file__).resolve().parents[1] / "dags" / "vibedream_resume.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = next(
        value
        for value in vars(module).values()
        if isinstance(value, DAG) and value.dag_id == "vibedream_resume_worker"
    )
    below_3_3 = Version(Version(airflow_version).base_version) < Version("3.3")
    image = f"{vibedream_conn.base_url}/samples/160x120.png"
    for jobs, output in enumerate(["", str(tmp_path / "out")], start=1):
        capsys.readouterr()
        caplog.clear()
        run = dag.test(run_conf={"image": image, "output": output})
        assert run.state == "success"
        assert emulator_stats(vibedream_conn.base_url)["accepted_submissions"] == jobs
        warned = "task_state_store is not available (Airflow < 3.3)" in capsys.readouterr().out + caplog.text
        assert warned == (below_3_3 and not output), f"output_path={output!r}"
