"""cove.registry"""
