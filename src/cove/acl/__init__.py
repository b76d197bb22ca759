"""Consul's ACL system for cove: tokens, policies and roles in the store,
Consul's rule language (``rules``), the authorizer that judges a request
(``authorizer``) and the service that resolves tokens (``service``)::

    acl = AclService(store, clock, enabled=True, default_policy="deny")
    acl.setup()
    acl.resolve(secret).need("key", "app/x", Access.WRITE)
"""

from cove.acl.authorizer import ALLOW_ALL, Authorizer
from cove.acl.rules import Access, Rules, parse
from cove.acl.service import AclService

__all__ = ["ALLOW_ALL", "Access", "AclService", "Authorizer", "Rules", "parse"]
