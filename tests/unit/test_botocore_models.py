"""The botocore session ClientFactory builds for Lambda reads the same models as botocore's own,
faster: found without listing every service, parsed by orjson."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.exceptions import UnknownServiceError

from zaindari.infra.botocore_models import botocore_session


@pytest.fixture(scope="module")
def loaders() -> tuple[Any, Any]:
    ours = botocore_session().get_component("data_loader")
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
    loader = botocore_session().get_component("data_loader")
    assert loader.search_paths[0] == str(tmp_path)
    assert loader.search_paths[-1] == botocore.session.Session().get_component("data_loader").search_paths[-1]


def test_a_client_is_made_without_listing_every_service() -> None:
    session = botocore_session()
    session.create_client(
        "dynamodb", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    loader = session.get_component("data_loader")
    assert [key for key in loader._cache if key[:3] == ("load_service_model", "dynamodb", "service-2")]
    assert not [key for key in loader._cache if key[0] == "list_available_services"]
