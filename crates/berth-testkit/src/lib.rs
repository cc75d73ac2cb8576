//! Test support: builds the static test app and its FROM-scratch images through the Docker
//! Engine API, starts `berth up` as a real process on free loopback ports, and waits with deadlines.

pub mod etcd;
pub mod image;
pub mod link;
pub mod load;
pub mod platform;
pub mod procfs;
pub mod receiver;

pub use image::{TestImages, docker_or_skip, node_containers, test_images};
pub use link::Link;
pub use load::{Load, LoadReport};
pub use platform::{NodeContainers, Platform, free_port, instance_answer, port_block, tail, wait_until, wait_until_or};
pub use receiver::Receiver;
