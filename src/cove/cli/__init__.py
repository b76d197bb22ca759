"""cove.cli"""
