"""cove.cni"""
