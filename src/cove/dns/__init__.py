"""cove.dns"""
