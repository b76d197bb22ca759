"""cove.ipam"""
