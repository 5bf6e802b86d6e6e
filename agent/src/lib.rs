//! The replication protocol: a master-side sender and a slave-side receiver, generic over small
//! traits that the daemon implements with the storage engine.
