//! ACPI hardware: power management registers.

pub mod piix4_pm;
