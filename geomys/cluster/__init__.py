"""The leader-follower cluster.

core.py is the consensus core (pure: messages in, actions out), with its
rules (rules.py) and log (log.py); node.py is the driver that feeds it and
carries out its actions; transport.py, wire.py and service.py are the gRPC
edge; forwarding.py batches a follower's writes for the leader.
"""
