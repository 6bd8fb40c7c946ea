//! The seed's GPU sample: an embedded cluster declared with 2 GPUs, an actor and
//! a task asking for one each. Each prints the ids it was given and its
//! `CUDA_VISIBLE_DEVICES`, which hold exactly those ids.
//!
//! `cargo run --release -p manta --example gpus` (no real GPU needed: the GPUs
//! are declared, as `ray.init(num_gpus=2)` does).

struct GpuActor;

#[manta::actor(num_gpus = 1)]
impl GpuActor {
    fn new() -> Self {
        GpuActor
    }

    fn ping(&self) -> String {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
        format!("actor GPU ids: {:?}, CUDA_VISIBLE_DEVICES: {visible}", manta::get_gpu_ids())
    }
}

#[manta::remote(num_gpus = 1)]
fn gpu_task() -> String {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    format!("task GPU ids: {:?}, CUDA_VISIBLE_DEVICES: {visible}", manta::get_gpu_ids())
}

#[manta::main]
fn main() -> Result<(), manta::Error> {
    let _job = manta::Builder::new().num_cpus(4).num_gpus(2).init()?;
    let actor = GpuActor::remote()?;
    // The actor holds its GPU while it lives, so the task gets the other one.
    println!("{}", actor.ping().get()?);
    println!("{}", gpu_task::remote().get()?);
    Ok(())
}
