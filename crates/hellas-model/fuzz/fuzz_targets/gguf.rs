//! Fuzzes the GGUF reader through every path hellasd reads an untrusted model by (whole files,
//! header prefixes of remote files, split parts, and the facts and plans made from them): any
//! byte string must be read or refused with an error, never panic, hang or allocate without
//! bound. Run by `cargo xtask fuzz`; the body is `hellas_model::testing::read_untrusted`, which
//! `cargo test -p hellas-model` also runs on the corpus and on every past crasher.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hellas_model::testing::read_untrusted(data));
