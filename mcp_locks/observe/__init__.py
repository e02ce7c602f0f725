"""What the server shows of itself: the event hub, the audit log, webhooks and their delivery worker, metrics, logging.

Events flow one way: the actors publish into the hub; consumers read it. Nothing here knows the engine.
"""
