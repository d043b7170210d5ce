//! Throughput of the masking engine on the data path. Targets (issue 3):
//! text without card numbers at >= 1 GiB/s per core, text where one field in
//! ten is a card number at >= 300 MiB/s. Criterion prints the throughput of
//! each case.

use std::hint::black_box;

use cardgate_sidecar::masking::Masker;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SIZE: usize = 1 << 20;

/// A small deterministic generator, so every run measures the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

const WORDS: &[&str] = &[
    "the", "agent", "selected", "customer", "orders", "from", "payments", "where", "status", "is",
    "settled", "and", "region", "equals", "north", "refund", "approved", "by", "reviewer",
    "ticket", "ok", "card", "holder", "name", "email", "address", "shipping", "pending",
];

/// Prose and log text without any digit.
fn text_without_digits() -> Vec<u8> {
    let mut r = Lcg(1);
    let mut out = String::with_capacity(SIZE + 64);
    while out.len() < SIZE {
        out.push_str(r.pick(WORDS));
        out.push_str(if r.next().is_multiple_of(12) {
            ".\n"
        } else {
            " "
        });
    }
    out.into_bytes()
}

/// Log lines with timestamps, ids, amounts and status codes, but no card
/// number.
fn log_lines_without_pans() -> Vec<u8> {
    let mut r = Lcg(2);
    let mut out = String::with_capacity(SIZE + 256);
    while out.len() < SIZE {
        out.push_str(&format!(
            "2026-11-22T10:{:02}:{:02}Z INFO request_id={} user={} status={} amount={}.{:02} {} {} {}\n",
            r.next() % 60,
            r.next() % 60,
            r.next(),
            r.pick(WORDS),
            200 + r.next() % 300,
            r.next() % 10000,
            r.next() % 100,
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
        ));
    }
    out.into_bytes()
}

const PANS: &[&str] = &[
    "4111111111111111",
    "5555 5555 5555 4444",
    "378282246310005",
    "6011-1111-1111-1117",
    "3530111333300000",
];

/// CSV rows of ten fields, one of which is a card number.
fn rows_one_pan_in_ten() -> Vec<u8> {
    let mut r = Lcg(3);
    let mut out = String::with_capacity(SIZE + 256);
    while out.len() < SIZE {
        let pan_at = r.next() % 10;
        for f in 0..10 {
            if f > 0 {
                out.push(',');
            }
            if f == pan_at {
                out.push_str(r.pick(PANS));
            } else if f % 3 == 0 {
                out.push_str(&(r.next() % 1_000_000).to_string());
            } else {
                out.push_str(r.pick(WORDS));
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let masker = Masker::builtin();
    let cases = [
        ("text without digits", text_without_digits()),
        ("log lines without card numbers", log_lines_without_pans()),
        ("one field in ten is a card number", rows_one_pan_in_ten()),
    ];
    let mut group = c.benchmark_group("mask_to");
    for (name, input) in &cases {
        group.throughput(Throughput::Bytes(input.len() as u64));
        let mut out = Vec::with_capacity(input.len() * 2);
        group.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                black_box(masker.mask_to(black_box(input), &mut out))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
