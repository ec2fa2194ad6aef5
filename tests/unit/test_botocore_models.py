"""The botocore session ClientFactory builds for Lambda reads the same models as botocore's own,
faster: found without listing every service, parsed by orjson or ahead of time."""

from __future__ import annotations

import marshal
import os
import shutil
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import UnknownServiceError
from botocore.loaders import Loader

from zaindari.infra.botocore_models import botocore_session, write_parsed_models

BUILTIN = Loader.BUILTIN_DATA_PATH


@pytest.fixture(scope="module")
def loaders() -> tuple[Any, Any]:
    ours = botocore_session(parsed_models=None).get_component("data_loader")
    theirs = botocore.session.Session().get_component("data_loader")
    return ours, theirs


@pytest.mark.parametrize("service", ["dynamodb", "s3", "sns", "events"])
@pytest.mark.parametrize("type_name", ["service-2", "endpoint-rule-set-1"])
def test_service_models_equal_botocores_own(loaders: tuple[Any, Any], service: str, type_name: str) -> None:
    ours, theirs = loaders
    assert ours.load_service_model(service, type_name) == theirs.load_service_model(service, type_name)


def test_explicit_api_version_loads_that_version(loaders: tuple[Any, Any]) -> None:
    ours, theirs = loaders
    model = ours.load_service_model("dynamodb", "service-2", api_version="2012-08-10")
    assert model["metadata"]["apiVersion"] == "2012-08-10"
    assert model == theirs.load_service_model("dynamodb", "service-2", api_version="2012-08-10")


@pytest.mark.parametrize("name", ["no-such-service", "../dynamodb", "dynamodb/2012-08-10"])
def test_unknown_service_gets_botocores_error(loaders: tuple[Any, Any], name: str) -> None:
    ours, _ = loaders
    with pytest.raises(UnknownServiceError, match="Unknown service"):
        ours.load_service_model(name, "service-2")


def test_search_path_follows_aws_data_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    loader = botocore_session(parsed_models=None).get_component("data_loader")
    assert loader.search_paths[0] == str(tmp_path)
    assert loader.search_paths[-1] == botocore.session.Session().get_component("data_loader").search_paths[-1]


def test_a_client_is_made_without_listing_every_service() -> None:
    session = botocore_session(parsed_models=None)
    session.create_client(
        "dynamodb", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    loader = session.get_component("data_loader")
    assert [key for key in loader._cache if key[:3] == ("load_service_model", "dynamodb", "service-2")]
    assert not [key for key in loader._cache if key[0] == "list_available_services"]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models parsed ahead of time, as `make build` writes them into a code asset."""
    return write_parsed_models(tmp_path_factory.mktemp("parsed"))


def test_parsed_models_equal_botocores_json(parsed: Path) -> None:
    files = {str(p.relative_to(parsed)).removesuffix(".marshal"): p for p in parsed.rglob("*.marshal")}
    assert {"endpoints", "dynamodb/2012-08-10/service-2", "s3/2006-03-01/endpoint-rule-set-1"} <= set(files)
    json_files = botocore.session.Session().get_component("data_loader").file_loader
    for name, path in files.items():
        assert marshal.loads(path.read_bytes()) == json_files.load_file(os.path.join(BUILTIN, name)), name


def test_a_session_reads_parsed_models_of_its_own_versions_only(parsed: Path, tmp_path: Path) -> None:
    # Given a copy of the parsed models in which DynamoDB's model is marked
    root = tmp_path / "parsed"
    shutil.copytree(parsed.parent, root)
    marked = root / parsed.name / "dynamodb" / "2012-08-10" / "service-2.marshal"
    model = marshal.loads(marked.read_bytes())
    model["metadata"]["serviceFullName"] = "parsed ahead of time"
    marked.write_bytes(marshal.dumps(model))

    def service_name() -> str:
        loader = botocore_session(parsed_models=root).get_component("data_loader")
        name: str = loader.load_service_model("dynamodb", "service-2")["metadata"]["serviceFullName"]
        return name

    # Then a session of the versions that wrote them reads them
    assert service_name() == "parsed ahead of time"
    # ... and one of other versions (another botocore, Python or marshal) reads botocore's JSON
    (root / parsed.name).rename(root / "botocore-0.0.0-py311-marshal4")
    assert service_name() == "Amazon DynamoDB"


def test_clients_from_parsed_models_sign_as_botocores_own(parsed: Path) -> None:
    def presigned(session: Any) -> str:
        s3 = session.create_client(
            "s3", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
        )
        url: str = s3.generate_presigned_url(
            "put_object", Params={"Bucket": "zaindari-lake", "Key": "scores/k"}, ExpiresIn=60
        )
        return url.split("Signature=", maxsplit=1)[0]

    ours = presigned(botocore_session(parsed_models=parsed.parent))
    assert ours == presigned(botocore.session.Session())
    assert ours.startswith("https://zaindari-lake.s3.amazonaws.com/scores/k?")
