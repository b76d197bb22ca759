"""cove.runtime"""
