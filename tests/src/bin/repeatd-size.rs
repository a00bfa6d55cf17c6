//! `repeatd-size`: the store-size benchmark (see `repeatd_tests::size_bench`
//! and BENCHMARKS.md). Build it with the gateway in release mode and run it:
//!
//! ```sh
//! cargo build --release -p repeatd -p repeatd-tests
//! target/release/repeatd-size --rate 100 --seconds 300 --retention 30
//! ```

use std::process::ExitCode;

use repeatd_tests::size_bench::{SizeOptions, markdown, run};

fn main() -> ExitCode {
    let (options, help) = match SizeOptions::parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(problem) => {
            eprintln!("repeatd-size: {problem}");
            return ExitCode::from(2);
        }
    };
    if help {
        println!("{}", SizeOptions::USAGE);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("repeatd-size: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(samples) => {
            print!("{}", markdown(&options, &samples));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("repeatd-size: {error:#}");
            ExitCode::FAILURE
        }
    }
}
