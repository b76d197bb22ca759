"""Service virtual IPs, load-balanced in the kernel (nftables ``inet cove_lb``).

- ``model``      Vip, Backend; store keys ``lb/vips/<service>``, ``lb/ips/<address>``
- ``vips``       VipService: allocation from the VIP ranges (never inside a network)
- ``backends``   the Backends protocol; EndpointBackends (``--service name:port``)
- ``registry``   RegistryBackends: the registry's passing instances, weighted
- ``compile``    pure compiler to nft JSON: whole table, or one service's update
- ``controller`` LbController: watches the store, one small transaction per change
- ``libnft``     in-process libnftables for the hot path (falls back to ``nft``)
"""
