// An AudioWorklet processor that hands the microphone's samples (mixed to mono, at the AudioContext's rate)
// to the page, one render quantum (128 samples) at a time. app.js resamples them to 16 kHz.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0 && input[0].length > 0) {
      const mono = new Float32Array(input[0].length);
      for (const channel of input) {
        for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / input.length;
      }
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}
registerProcessor("geneface-capture", CaptureProcessor);
