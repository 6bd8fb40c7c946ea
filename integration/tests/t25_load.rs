//! Load: a saturated machine must not produce false deaths. In its own test
//! binary so its busy threads do not slow the other scenario tests.

use std::time::{Duration, Instant};

use manta_integration::{TestCluster, phase};

#[test]
fn cluster_loaded_machine_produces_no_false_deaths() {
    let cluster = TestCluster::start(2);

    phase("burn both cores for 6 s while the GCS health-checks with default settings");
    let stop_at = Instant::now() + Duration::from_secs(6);
    let burners: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < stop_at {
                    for i in 0..100_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                }
                x
            })
        })
        .collect();
    for burner in burners {
        std::hint::black_box(burner.join().unwrap());
    }
    phase("nobody was declared dead");
    assert!(cluster.nodes_in_state("DEAD").is_empty());
    assert_eq!(cluster.nodes_in_state("ALIVE").len(), 3);
}
