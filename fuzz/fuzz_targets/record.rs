//! The record parser (`tsm-trace replay FILE`): any bytes give events or an error naming the
//! line, never a panic; what it accepts writes back and reads again as the same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsm_trace::events::record;

fuzz_target!(|data: &[u8]| {
    let Ok((header, events)) = record::read_all(data, "fuzz.jsonl") else {
        return;
    };
    let mut again = Vec::new();
    {
        let mut w = record::Writer::new(&mut again, &header.kernel).expect("writing to memory");
        for ev in &events {
            w.write(ev).expect("writing to memory");
        }
    }
    let (_, back) = record::read_all(&again[..], "again.jsonl").expect("a written record reads back");
    assert_eq!(back, events);
});
