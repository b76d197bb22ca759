"""Network policy in the kernel (nftables ``inet cove_policy``).

- ``model``      Selector, PortSpec, Rule; store keys ``policy/rules/<id>``
                 (default-deny is ``Network.default_deny``)
- ``compile``    pure: selectors to addresses, the nft table, and ``decide``
                 (the same decision, explained, for ``cove policy test``)
- ``intentions`` Consul intentions: store, precedence, validation
                 (``policy/intentions/<id>``), compiled with the rules
- ``service``    PolicyService: allow, rm, default-deny switch, test
- ``controller`` PolicyController: recompiles on every relevant store change
"""
