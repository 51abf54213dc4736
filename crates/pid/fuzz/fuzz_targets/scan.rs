#![no_main]
//! Any UTF-8 input: no panic, spans well formed, pseudonymise total.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let findings = sitrep_pid::scan(text);
    let mut last = 0;
    for f in &findings {
        assert!(f.start >= last && f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        last = f.end;
    }
    let _ = sitrep_pid::pseudonymise(text, &findings, Some("MI-0001"));
    let _ = sitrep_pid::scan_line_json(text);
});
