"""cove.agent"""
