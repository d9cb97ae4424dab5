//! The protobuf codec of the tunnel's RPCs: prost, with small initial codec
//! buffers. tonic's default (8 KiB to encode and 8 KiB to decode, per
//! stream) would make every idle pre-opened data stream cost 16 KiB at each
//! end; buffers still grow to the largest message when traffic flows.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a stream.
pub const CODEC_BUFFER: usize = 1024;
/// Encoded bytes after which a busy stream yields to others (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct TunnelCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for TunnelCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for TunnelCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
