"""The guard steps as values (pipeline/guard.py, core/origins.py, admission/): what a client from another
host may do, how tokens are read, how buckets refill. A running gateway listens on 127.0.0.1 only in tests,
so the rules for clients elsewhere are proven here, on the same functions both data paths call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDictProxy
from yarl import URL

from gateway.admission.buckets import TokenBuckets
from gateway.admission.sockets import OpenSockets
from gateway.backends.table import Backend, BackendTable
from gateway.core.errors import Forbidden, HostNotAllowed, Unauthorized
from gateway.core.origins import normalized_origin, same_origin, split_host_header
from gateway.observe.metrics import GatewayMetrics
from gateway.pipeline import guard
from gateway.runtime import AccessPolicy, RoutingPolicy, Runtime

ADMIN = "admin-token-0123456789abcdef"
ANA = "ana-token-0123456789abcdef"


@dataclass
class Facts:
    method: str = "GET"
    raw_target: str = "/queue"
    headers: Mapping[str, str] = field(default_factory=dict)
    client_ip: str | None = "203.0.113.7"
    websocket: bool = False

    @property
    def path(self) -> str:
        return self.raw_target.partition("?")[0]

    @property
    def query(self) -> MultiDictProxy[str]:
        return URL.build(query_string=self.raw_target.partition("?")[2], encoded=True).query

    def header(self, name: str) -> str | None:
        return CIMultiDict(self.headers).get(name)

    def query_value(self, name: str) -> str | None:
        return self.query.get(name)


def runtime(access: AccessPolicy) -> Runtime:
    table = BackendTable({"a": Backend("a", URL("http://a.test"))}, default="a")
    return Runtime(
        backends=table, store=None, calls=None, policy=RoutingPolicy(), metrics=GatewayMetrics(table), access=access
    )  # type: ignore[arg-type]  # the guard reads neither the store nor the calls


def refusal(access: AccessPolicy, facts: Facts, **route: object) -> str | None:
    rt = runtime(access)
    caller = guard.identify(facts, rt, token_required=False)
    kwargs = {"write": True, "reveals_owners": False, "own_user": None, **route}
    return guard.admin_refusal_reason(rt, facts, caller, **kwargs)  # type: ignore[arg-type]


def test_without_an_admin_token_a_client_elsewhere_cannot_write() -> None:
    access = AccessPolicy()
    assert refusal(access, Facts(method="PUT")) is not None
    assert refusal(access, Facts(method="PUT", client_ip="127.0.0.1")) is None
    assert refusal(access, Facts(method="PUT", client_ip="::1")) is None
    assert refusal(access, Facts(), write=False, reveals_owners=True) is not None  # owners are not shown either
    assert refusal(access, Facts(), write=False) is None  # plain reads stay open


def test_a_page_in_a_browser_on_this_host_cannot_lend_its_loopback_address() -> None:
    facts = Facts(method="PUT", client_ip="127.0.0.1", headers={"Host": "127.0.0.1:8190", "Origin": "http://evil.test"})
    assert refusal(AccessPolicy(), facts) is not None


def test_the_admin_token_is_needed_from_anywhere_once_set() -> None:
    access = AccessPolicy(admin_token=ADMIN)
    assert refusal(access, Facts(client_ip="127.0.0.1")) is not None
    assert refusal(access, Facts(headers={"Authorization": f"Bearer {ADMIN}"})) is None
    assert refusal(access, Facts(headers={"Authorization": f"bearer  {ADMIN} "})) is None
    with pytest.raises(Unauthorized):
        refusal(access, Facts(headers={"Authorization": "Bearer wrong-token-0123456789"}))


def test_self_service_is_a_users_own_preference_only() -> None:
    access = AccessPolicy(admin_token=ADMIN, users_by_token={ANA: "ana"})
    as_ana = Facts(headers={"Authorization": f"Bearer {ANA}"})
    assert refusal(access, as_ana, own_user="ana") is None
    assert refusal(access, as_ana, own_user="bo") is not None
    assert refusal(access, as_ana, own_user="bo", write=False) is not None  # with tokens on, not even to read
    closed = AccessPolicy(admin_token=ADMIN, users_by_token={ANA: "ana"}, allow_self_service=False)
    assert refusal(closed, as_ana, own_user="ana") is not None
    assert refusal(closed, as_ana, own_user="ana", write=False) is None


def test_tokens_are_read_from_the_header_then_the_query_then_the_cookie() -> None:
    access = AccessPolicy(users_by_token={ANA: "ana"})
    assert guard.presented_token(Facts(headers={"Authorization": f"Bearer {ANA}"}), access) == (ANA, False)
    assert guard.presented_token(Facts(raw_target=f"/view?token={ANA}"), access) == (ANA, True)
    cookie = {"Cookie": f"other=1; comfy_gateway_token={ANA}; x=2"}
    assert guard.presented_token(Facts(headers=cookie), access) == (ANA, False)
    assert guard.presented_token(Facts(headers={"Cookie": "comfy_gateway_token_x=1"}), access) == (None, False)
    assert guard.presented_token(Facts(headers={"Authorization": "Basic abc"}), access) == (None, False)


def test_a_token_user_and_a_header_user_must_agree() -> None:
    rt = runtime(AccessPolicy(users_by_token={ANA: "ana"}))
    caller = guard.identify(Facts(headers={"Authorization": f"Bearer {ANA}"}), rt, token_required=True)
    assert (caller.user, caller.by_token, caller.key) == ("ana", True, "user:ana")
    with pytest.raises(Forbidden):
        guard.identify(Facts(headers={"Authorization": f"Bearer {ANA}", "comfy-user": "bo"}), rt, token_required=True)
    with pytest.raises(Unauthorized):
        guard.identify(Facts(headers={"comfy-user": "ana"}), rt, token_required=True)
    anonymous = guard.identify(Facts(headers={"comfy-user": "ana"}), rt, token_required=False)
    assert (anonymous.user, anonymous.by_token, anonymous.key) == ("ana", False, "ip:203.0.113.7")


def test_allowed_hosts_compare_names_not_spellings() -> None:
    access = AccessPolicy(allowed_hosts=frozenset({"comfy.example"}))
    guard.check_host(Facts(headers={"Host": "COMFY.example.:8190"}), access)
    for host in ("evil.example", "comfy.example.evil.example", "", "comfy.example@evil.example", "[::1"):
        with pytest.raises(HostNotAllowed):
            guard.check_host(Facts(headers={"Host": host}), access)


def test_token_buckets_refill_at_their_rate_and_forget_the_least_recent() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 3, max_clients=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # a token every half second
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    buckets.take("b")
    buckets.take("c")  # a third client: "a", seen least recently, is forgotten
    assert len(buckets) == 2
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert TokenBuckets(0, 1, 1).take("x") == 0.0  # off


def test_open_sockets_count_per_client_up_to_the_cap() -> None:
    sockets = OpenSockets(2)
    assert sockets.open("a") and sockets.open("a") and not sockets.open("a")
    assert sockets.open("b")
    sockets.close("a")
    assert sockets.open("a")
    for _ in range(5):
        sockets.close("b")  # closing more than was opened never goes negative
    assert sockets.held("b") == 0
    assert all(OpenSockets(0).open("x") for _ in range(1000))


@given(st.text(max_size=60), st.text(max_size=60))
def test_origin_checks_never_raise_on_any_text(origin: str, host: str) -> None:
    assert same_origin(origin, host) in (True, False)
    for parse in (normalized_origin, lambda text: split_host_header(text)):
        try:
            parse(origin)
        except ValueError:
            pass


@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=80))
def test_the_cors_origin_is_rebuilt_never_echoed(origin: str) -> None:
    access = AccessPolicy(allowed_origins=frozenset({"http://app.example:80"}))
    try:
        allowed = guard.cross_origin(Facts(headers={"Host": "gw:8190", "Origin": origin}), access)
    except Forbidden:
        return
    assert allowed in (None, "http://app.example")


# --- verdicts kept per head ---------------------------------------------------------------------------------------


@dataclass
class KeyedFacts(Facts):
    """Facts with a head key, as the fast path gives one (every header and the address, or None)."""

    keyed: bool = True

    @property
    def head_key(self) -> tuple[object, ...] | None:
        if not self.keyed:
            return None
        return (self.method, self.raw_target, self.client_ip, tuple(sorted(self.headers.items())))


def _endpoint(facts: Facts) -> object:
    from gateway.pipeline.classify import classify

    return classify(facts.method, facts.path)


def kept_verdict(kept: guard.KeptVerdicts, rt: Runtime, facts: KeyedFacts) -> tuple[guard.Verdict, dict[str, str]]:
    answer_headers: dict[str, str] = {}
    verdict = kept.verdict(facts, rt, _endpoint(facts), answer_headers)  # type: ignore[arg-type]
    return verdict, answer_headers


def test_a_head_seen_again_gets_the_verdict_kept_for_it_with_its_cors_headers() -> None:
    rt = runtime(AccessPolicy(users_by_token={ANA: "ana"}, allowed_origins=frozenset({"https://app.example:443"})))
    kept = guard.KeptVerdicts(8)
    facts = KeyedFacts(headers={"Authorization": f"Bearer {ANA}", "Origin": "https://app.example"})
    first, first_headers = kept_verdict(kept, rt, facts)
    again, again_headers = kept_verdict(kept, rt, facts)
    assert again is first and len(kept) == 1
    assert first.caller is not None and first.caller.user == "ana"
    assert first_headers == again_headers and again_headers["Access-Control-Allow-Origin"] == "https://app.example"
    elsewhere, _ = kept_verdict(kept, rt, KeyedFacts(headers=facts.headers, client_ip="198.51.100.1"))
    assert elsewhere is not first and elsewhere.caller is not None and elsewhere.caller.ip == "198.51.100.1"


def test_a_refusal_is_never_kept_and_a_head_without_a_key_is_judged_every_time() -> None:
    rt = runtime(AccessPolicy(users_by_token={ANA: "ana"}))
    kept = guard.KeptVerdicts(8)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            kept_verdict(kept, rt, KeyedFacts(headers={"Authorization": "Bearer wrong-token-0123456789"}))
    assert len(kept) == 0
    unkeyed = KeyedFacts(headers={"Authorization": f"Bearer {ANA}"}, keyed=False)
    assert kept_verdict(kept, rt, unkeyed)[0] is not kept_verdict(kept, rt, unkeyed)[0]
    assert len(kept) == 0
    nothing = guard.KeptVerdicts(0)
    keyed = KeyedFacts(headers={"Authorization": f"Bearer {ANA}"})
    assert kept_verdict(nothing, rt, keyed)[0] is not kept_verdict(nothing, rt, keyed)[0] and len(nothing) == 0


def test_an_unknown_backend_is_not_decided_in_the_verdict() -> None:
    """Its 400 comes after the allowance is taken, as for any request: the verdict only says it chose none."""
    rt = runtime(AccessPolicy())
    verdict, _ = kept_verdict(guard.KeptVerdicts(8), rt, KeyedFacts(headers={"X-Comfy-Backend": "nope"}))
    assert (verdict.explicit, verdict.chosen) == (None, False)
    chosen, _ = kept_verdict(guard.KeptVerdicts(8), rt, KeyedFacts(headers={"X-Comfy-Backend": "a"}))
    assert chosen.chosen and chosen.explicit is not None and chosen.explicit.backend == "a"


@given(st.lists(st.sampled_from([f"10.0.0.{i}" for i in range(12)]), max_size=60), st.integers(0, 6))
def test_no_more_verdicts_are_kept_than_the_bound(addresses: list[str], size: int) -> None:
    rt = runtime(AccessPolicy())
    kept = guard.KeptVerdicts(size)
    for address in addresses:
        verdict, _ = kept_verdict(kept, rt, KeyedFacts(client_ip=address))
        assert verdict.caller is not None and verdict.caller.ip == address  # never another head's verdict
        assert len(kept) <= size
