//! Fuzzes the GGUF reader: any byte string must parse or fail with an error, never panic, hang
//! or allocate without bound. The same property runs in CI as
//! `gguf::tests::mutated_inputs_never_panic`.
#![no_main]

use hellas_model::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(data, data.len() as u64) {
        let _ = file.model_info();
    }
    // A caller may claim a larger file than the bytes it can read.
    let _ = GgufFile::parse(data, u64::MAX);
});
