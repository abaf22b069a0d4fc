//! The `veil measure` JSON document the KBS CLI loads (`--from-measure`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_measure::report::MeasurementReport;

fuzz_target!(|data: &[u8]| {
    let _ = MeasurementReport::from_json(data);
});
