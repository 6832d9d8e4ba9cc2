//! The reconcilers that keep DPS in line with the custom resources.
