"""The ACL service: tokens resolved to authorizers, with a cache, over the
store; the agent's own tokens; the checks other parts of cove ask for.

Secrets never reach the store in clear text: a token is found by the
SHA-256 of a cluster-wide random salt and its SecretID, so a copy of the
store gives neither the secrets nor a table to look them up in. Reads of a
token therefore show its SecretID only where the caller holds it anyway (the
answers to create, clone and bootstrap, and ``token/self``); everywhere else
it reads ``<hidden>``, as Consul shows a secret to a token without
``acl:write``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Sequence

from cove.acl import model as m
from cove.acl.authorizer import ALLOW_ALL, Authorizer
from cove.acl.objects import AclObjects
from cove.acl.rules import Access, Rule, Rules, parse
from cove.clock import Clock
from cove.codec import loads
from cove.errors import InvalidArgument, PermissionDenied, StoreError
from cove.store.base import Compare, Event, Put, Store

log = logging.getLogger(__name__)

_CACHE_LIMIT = 10_000


def _service_rules(name: str) -> Rules:
    return Rules(
        (
            Rule("service", name, False, Access.WRITE),
            Rule("service", f"{name}-sidecar-proxy", False, Access.WRITE),
            Rule("service", "", True, Access.READ),
            Rule("node", "", True, Access.READ),
        )
    )


def _node_rules(name: str) -> Rules:
    return Rules((Rule("node", name, False, Access.WRITE), Rule("service", "", True, Access.READ)))


_DNS_RULES = Rules(
    tuple(Rule(r, "", True, Access.READ) for r in ("node", "service", "query")),
)


def _identity_rules(token_or_role: m.Token | m.Role, dc: str) -> list[Rules]:
    """The policies Consul derives from service and node identities and
    from templated policies (only those meant for this datacenter)."""
    out = []
    for ident in token_or_role.service_identities:
        if not ident.datacenters or dc in ident.datacenters:
            out.append(_service_rules(ident.name))
    for ident in token_or_role.node_identities:
        if not ident.datacenters or dc in ident.datacenters:
            out.append(_node_rules(ident.name))
    for tp in token_or_role.templated:
        if tp.datacenters and dc not in tp.datacenters:
            continue
        if tp.name == "builtin/service":
            out.append(_service_rules(tp.variable))
        elif tp.name == "builtin/node":
            out.append(_node_rules(tp.variable))
        elif tp.name == "builtin/dns":
            out.append(_DNS_RULES)
    return out


class AclService:
    """``enabled`` False: every check passes except ``allows_operator``,
    and the ACL routes answer that ACL support is disabled."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        enabled: bool = False,
        default_policy: str = "allow",
        initial_management: str | None = None,
        node_name: str = "",
        datacenter: str = "dc1",
    ) -> None:
        if default_policy not in ("allow", "deny"):
            raise InvalidArgument(
                f"invalid ACL default policy {default_policy!r}: expected allow or deny"
            )
        self.store = store
        self.clock = clock
        self.enabled = enabled
        self.default_allow = default_policy == "allow"
        self.node_name = node_name
        self.datacenter = datacenter
        self._initial_management = initial_management
        self._salt = b""
        self._cache: dict[str, Authorizer] = {}
        self._generation = 0  # bumped by every invalidation
        self._dns: Authorizer | None = None  # kept apart: no client token can name it
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        # pyhcl builds its parser tables on every call (tens of ms), so each
        # distinct rules text is parsed once per agent.
        self._parsed: dict[str, Rules] = {}
        self.objects = AclObjects(store, clock, self.hash, self.invalidate, self.parse_rules)

    # -- start-up -----------------------------------------------------------

    def setup(self) -> None:
        """Create what an ACL system always has (salt, the built-in policy,
        the anonymous token, the initial management token); idempotent, and
        safe when several agents share the store."""
        if not self.enabled:
            return
        salt = secrets.token_hex(32).encode()
        self.store.txn([Compare.absent(m.SALT)], [Put(m.SALT, salt)])
        kv = self.store.get(m.SALT)
        if kv is None:
            raise StoreError("the ACL salt vanished right after it was written")
        self._salt = kv.value
        self.objects.ensure_builtins()
        if self._initial_management:
            self.objects.ensure_management(self._initial_management)
        for kv in self.store.range(m.POLICIES).kvs:  # parsed now, not on a first request
            with contextlib.suppress(InvalidArgument):
                self.parse_rules(m.Policy.from_store(loads(kv.value)).rules)

    # -- resolving ----------------------------------------------------------

    def hash(self, secret: str) -> str:
        return hashlib.sha256(self._salt + b"\0" + secret.encode()).hexdigest()

    def cached(self, secret: str) -> Authorizer | None:
        """The authorizer for ``secret`` if it is at hand (no store read)."""
        if not self.enabled:
            return ALLOW_ALL
        hit = self._cache.get(secret)
        if hit is None or (hit.expires is not None and hit.expires <= self.clock.time()):
            return None
        return hit

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer for a request's token; no token means the agent's
        ``default`` token, or else the anonymous token. Raises
        ``PermissionDenied("ACL not found")`` for an unknown or expired
        secret."""
        hit = self.cached(secret)
        if hit is not None:
            return hit
        generation = self._generation
        if not secret:
            authz = self._resolve_hash(self._agent_hash("default") or self.hash(m.ANONYMOUS_SECRET))
        else:
            authz = self._resolve_hash(self.hash(secret))
        self._keep(secret, authz, generation)
        return authz

    def _keep(self, key: str, authz: Authorizer, generation: int) -> None:
        # Not kept if an ACL object changed while it was read: it may have
        # been read from before the change, and nothing would drop it later.
        with self._lock:
            if generation != self._generation:
                return
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache = {}
            self._cache[key] = authz

    def _resolve_hash(self, secret_hash: str) -> Authorizer:
        token = self.objects.token_by_hash(secret_hash)
        now = self.clock.time()
        if token is None or (token.expiration_time is not None and token.expiration_time <= now):
            raise PermissionDenied("ACL not found")
        policies, management = self._policies_of(token)
        return Authorizer(
            policies,
            default_allow=self.default_allow,
            management=management,
            accessor=token.accessor_id,
            expires=token.expiration_time,
        )

    def _policies_of(self, token: m.Token) -> tuple[list[Rules], bool]:
        ids: list[str] = list(token.policies)
        rules = _identity_rules(token, self.datacenter)
        for role_id in token.roles:
            role = self.objects.role(role_id)
            if role is not None:
                ids.extend(role.policies)
                rules.extend(_identity_rules(role, self.datacenter))
        management = m.MANAGEMENT_ID in ids
        for pid in dict.fromkeys(ids):
            policy = self.objects.policy(pid)
            if policy is None or (policy.datacenters and self.datacenter not in policy.datacenters):
                continue
            try:
                rules.append(self.parse_rules(policy.rules))
            except InvalidArgument:  # stored before a stricter parser: it grants nothing
                log.warning("ACL policy %s has rules that no longer parse", policy.name)
        return rules, management

    def parse_rules(self, text: str) -> Rules:
        """``rules.parse``, remembered by text (``InvalidArgument`` as it)."""
        hit = self._parsed.get(text)
        if hit is None:
            hit = parse(text)
            if len(self._parsed) >= _CACHE_LIMIT:
                self._parsed = {}
            self._parsed[text] = hit
        return hit

    def invalidate(self) -> None:
        """Forget every resolved token (an ACL object changed)."""
        with self._lock:
            self._cache = {}
            self._dns = None
            self._generation += 1
        for listener in self._listeners:
            listener()

    def on_events(self, events: Sequence[Event]) -> None:
        """Hub callback for ``acl/``: changes made by other agents."""
        if events:
            self.invalidate()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever what tokens may do may have changed."""
        self._listeners = [*self._listeners, listener]

    # -- the agent's tokens -------------------------------------------------

    def _agent_hash(self, kind: str) -> str | None:
        kv = self.store.get(f"{m.AGENT_TOKENS}{m.seg(self.node_name)}/{kind}")
        return kv.value.decode() if kv is not None else None

    def set_agent_token(self, kind: str, secret: str) -> None:
        key = f"{m.AGENT_TOKENS}{m.seg(self.node_name)}/{kind}"
        if secret:
            self.store.put(key, self.hash(secret).encode())
        else:
            self.store.delete(key)
        self.invalidate()

    def dns_authorizer(self) -> Authorizer:
        """What DNS answers as: the agent's ``dns`` token, else its
        ``default`` token, else the anonymous token."""
        if not self.enabled:
            return ALLOW_ALL
        hit = self._dns
        if hit is not None:
            return hit
        generation = self._generation
        chosen = self._agent_hash("dns") or self._agent_hash("default")
        try:
            authz = self._resolve_hash(chosen or self.hash(m.ANONYMOUS_SECRET))
        except PermissionDenied:  # the configured token was deleted
            authz = Authorizer(default_allow=False, accessor=m.ANONYMOUS_ID)
        with self._lock:
            if generation == self._generation:
                self._dns = authz
        return authz

    # -- hooks for other parts of cove --------------------------------------

    def allows_operator(self, token: str | None, write: bool) -> bool:
        """True when ACLs are enabled and ``token`` (a SecretID) grants
        ``operator`` read (or write, with ``write``). False when ACLs are
        disabled: the native API then stays on the Unix socket."""
        if not self.enabled or not token:
            return False
        try:
            authz = self.resolve(token)
        except PermissionDenied:
            return False
        return authz.scalar("operator", Access.WRITE if write else Access.READ)

    def allows_native(self, token: str | None, method: str) -> bool:
        """``allows_operator`` for a native API (``/api``) request: reads
        (GET, HEAD) need ``operator`` read, everything else write."""
        return self.allows_operator(token, write=method.upper() not in ("GET", "HEAD"))
