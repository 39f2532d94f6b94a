import pytest

from gateway.core.errors import UnknownBackend
from gateway.pipeline.select import Source, select_backend

BACKENDS = ("kerniegen", "comfyui", "gpu-2")


@pytest.mark.parametrize(
    ("header", "query", "preference", "expected"),
    [
        pytest.param("comfyui", "gpu-2", "kerniegen", ("comfyui", Source.HEADER), id="header-beats-all"),
        pytest.param(None, "gpu-2", "comfyui", ("gpu-2", Source.QUERY), id="query-beats-preference"),
        pytest.param("", "gpu-2", None, ("gpu-2", Source.QUERY), id="empty-header-is-absent"),
        pytest.param(None, None, "comfyui", ("comfyui", Source.PREFERENCE), id="preference-beats-default"),
        pytest.param(None, None, None, ("kerniegen", Source.DEFAULT), id="default"),
        pytest.param(" comfyui ", None, None, ("comfyui", Source.HEADER), id="header-whitespace-trimmed"),
    ],
)
def test_precedence(header, query, preference, expected):
    selection = select_backend(
        header=header, query=query, preference=preference, default="kerniegen", backends=BACKENDS
    )
    assert (selection.backend, selection.source) == expected


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        pytest.param({"header": "comfy"}, "header X-Comfy-Backend", id="header"),
        pytest.param({"query": "ComfyUI"}, "query parameter backend", id="query-case-sensitive"),
        pytest.param({"preference": "gone", "user": "ana"}, "stored preference of user 'ana'", id="stale-preference"),
    ],
)
def test_unknown_name_is_an_error_naming_the_valid_ones(kwargs, where):
    args = {"header": None, "query": None, "preference": None} | kwargs
    with pytest.raises(UnknownBackend) as info:
        select_backend(default="kerniegen", backends=BACKENDS, **args)
    assert where in info.value.message
    assert info.value.details == sorted(BACKENDS)
    assert info.value.status == 400
    assert info.value.body()["error"]["type"] == "unknown_backend"
