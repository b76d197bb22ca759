"""cove.datapath"""
