import pytest

from gateway.pipeline.classify import Routing, classify, prompt_ids_in_body, strip_api_prefix


@pytest.mark.parametrize(
    ("method", "path", "template", "routing"),
    [
        ("POST", "/prompt", "/prompt", Routing.SUBMIT),
        ("POST", "/api/prompt", "/prompt", Routing.SUBMIT),
        ("GET", "/prompt", "/prompt", Routing.MERGEABLE),
        ("GET", "/api/queue", "/queue", Routing.MERGEABLE),
        ("GET", "/history", "/history", Routing.MERGEABLE),
        ("GET", "/history/abc-1", "/history/{prompt_id}", Routing.HISTORY),
        ("POST", "/history", "/history", Routing.PROMPT_SCOPED),
        ("POST", "/queue", "/queue", Routing.PROMPT_SCOPED),
        ("POST", "/api/interrupt", "/interrupt", Routing.PROMPT_SCOPED),
        ("GET", "/view", "/view", Routing.VIEW),
        ("HEAD", "/view", "/view", Routing.VIEW),
        ("GET", "/ws", "/ws", Routing.WEBSOCKET),
        ("GET", "/api/ws", "/ws", Routing.WEBSOCKET),
        ("GET", "/object_info/KSampler", "/object_info/{node_class}", Routing.PLAIN),
        ("POST", "/userdata/workflows/a.json", "/userdata/{file}", Routing.PLAIN),
        ("GET", "/", "/", Routing.PLAIN),
        ("GET", "/api/", "/", Routing.PLAIN),
        ("GET", "/some/custom/node/route", "other", Routing.PLAIN),
        ("GET", "/history/", "other", Routing.PLAIN),
    ],
)
def test_classify(method, path, template, routing):
    endpoint = classify(method, path)
    assert (endpoint.template, endpoint.routing) == (template, routing)


def test_history_prompt_id_from_path():
    assert classify("GET", "/api/history/my-id").prompt_id == "my-id"


@pytest.mark.parametrize(
    ("path", "bare"), [("/api", "/"), ("/api/", "/"), ("/api/queue", "/queue"), ("/apix", "/apix"), ("/q", "/q")]
)
def test_strip_api_prefix(path, bare):
    assert strip_api_prefix(path) == bare


@pytest.mark.parametrize(
    ("template", "body", "ids"),
    [
        ("/queue", {"delete": ["a", "b"]}, ["a", "b"]),
        ("/queue", {"clear": True}, []),
        ("/history", {"delete": ["a", 3, ""]}, ["a"]),
        ("/interrupt", {"prompt_id": "p"}, ["p"]),
        ("/interrupt", None, []),
        ("/interrupt", [], []),
    ],
)
def test_prompt_ids_in_body(template, body, ids):
    assert prompt_ids_in_body(template, body) == ids
