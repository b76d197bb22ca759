"""cove.policy"""
