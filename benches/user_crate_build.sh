#!/usr/bin/env bash
# Fresh release build of an outside crate with one remote function, with and
# without manta's default `embedded` feature (figures in BENCHMARKS.md).
# Usage: bash benches/user_crate_build.sh   (takes a few minutes; uses its own temp folders)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for embedded in true false; do
  crate="$work/outside-$embedded"
  mkdir -p "$crate/src"
  cat >"$crate/Cargo.toml" <<TOML
[package]
name = "outside"
version = "0.1.0"
edition = "2024"

[dependencies]
manta = { path = "$repo/worker", default-features = $embedded }

[workspace]
TOML
  cat >"$crate/src/main.rs" <<'RUST'
#[manta::remote]
fn double(x: i64) -> i64 {
    x * 2
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let _job = manta::init()?;
    println!("{}", double::remote(21).get()?);
    Ok(())
}
RUST
  cp "$repo/Cargo.lock" "$crate/"
  start=$(date +%s.%N)
  (cd "$crate" && CARGO_TARGET_DIR="$crate/target" cargo build --release 2>"$crate/build.log")
  end=$(date +%s.%N)
  echo "embedded=$embedded crates=$(grep -c Compiling "$crate/build.log") seconds=$(echo "$end - $start" | bc)"
done
