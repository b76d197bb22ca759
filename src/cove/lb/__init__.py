"""cove.lb"""
