"""Tokens, policies and roles in the store, in Consul's JSON shapes: one
object with every operation the ACL routes call."""

from __future__ import annotations

from cove.acl.policies import PolicyWrites
from cove.acl.reads import NOT_FOUND
from cove.acl.tokens import TokenWrites

__all__ = ["NOT_FOUND", "AclObjects"]


class AclObjects(TokenWrites, PolicyWrites):
    """See ``reads.AclReads`` for its constructor."""
