"""cove.api"""
