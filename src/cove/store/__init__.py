"""cove.store"""
