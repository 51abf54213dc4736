//! Scan throughput on typical messages (the labelled corpus) and the latency of one
//! 1 KB message. `cargo bench -p sitrep-pid`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sitrep_pid::Scanner;

const CORPUS: &str = include_str!("../corpus/corpus.jsonl");

fn messages() -> Vec<String> {
    CORPUS
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("corpus line is JSON");
            v["text"].as_str().expect("text field").to_owned()
        })
        .collect()
}

fn one_kb(messages: &[String]) -> String {
    let mut s = String::new();
    for m in messages.iter().cycle() {
        if s.len() + m.len() + 1 > 1024 {
            break;
        }
        s.push_str(m);
        s.push(' ');
    }
    while s.len() < 1024 {
        s.push('.');
    }
    s
}

fn bench(c: &mut Criterion) {
    let scanner = Scanner::new();
    let msgs = messages();
    let total: usize = msgs.iter().map(String::len).sum();

    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("corpus_messages", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                n += scanner.scan(black_box(m)).len();
            }
            n
        })
    });

    let kb = one_kb(&msgs);
    g.throughput(Throughput::Bytes(kb.len() as u64));
    g.bench_function("message_1kb", |b| b.iter(|| scanner.scan(black_box(&kb))));

    let plain =
        "pt comfortable overnight, obs stable, for review on ward round, family aware ".repeat(13);
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("message_1kb_no_digits", |b| {
        b.iter(|| scanner.scan(black_box(&plain)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
