//! sysfs reconciliation (/sys/bus/pci/devices/*/tsm/bound).
