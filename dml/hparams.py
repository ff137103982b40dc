"""TensorBoard's HParams tab for dml runs: each run's options and, from its scalars, its final
metrics, so that every run under a logdir can be compared in TensorBoard.

The tab reads two summaries per run (the plugin's ``SessionStartInfo`` with the options, and a
``SessionEndInfo``). They are written as event records of their own file in the run's logs/
folder. Why not through mxboard: its ``SummaryMetadata.PluginData.content`` is declared a
``string`` (TensorBoard's is ``bytes``), so the plugin's binary message cannot be put there, and
TensorBoard's own summary protos cannot be imported beside mxboard's (both register
``tensorboard.*`` messages). The plugin's messages come from TensorBoard's ``plugin_data_pb2``
(which imports fine); the few enclosing fields are encoded here by the protobuf wire format:

    Event         {1: wall_time double, 2: step int64, 5: summary}
    Summary       {1: value}
    Summary.Value {1: tag string, 8: tensor (an empty float tensor), 9: metadata}
    Metadata      {1: plugin_data {1: plugin_name "hparams", 2: content bytes}}
"""
import struct
import time

SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"
_DT_FLOAT = 1


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire_type, payload):
    return _varint((number << 3) | wire_type) + payload


def _bytes_field(number, data):
    return _field(number, 2, _varint(len(data)) + data)


def summary_event(tag, plugin_content, step=0, wall_time=None):
    """The serialized ``Event`` holding one ``Summary.Value`` of the HParams plugin."""
    empty_tensor = _field(1, 0, _varint(_DT_FLOAT)) + _bytes_field(2, _bytes_field(2, b""))
    metadata = _bytes_field(1, _bytes_field(1, b"hparams") + _bytes_field(2, plugin_content))
    value = (_bytes_field(1, tag.encode("utf-8")) + _bytes_field(8, empty_tensor)
             + _bytes_field(9, metadata))
    return (_field(1, 1, struct.pack("<d", time.time() if wall_time is None else wall_time))
            + _field(2, 0, _varint(int(step))) + _bytes_field(5, _bytes_field(1, value)))


def session_start(hparams, group_name, start_time=None):
    """The event of the plugin's ``SessionStartInfo``: ``hparams`` maps names to numbers,
    booleans or strings."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=group_name, start_time_secs=(
        time.time() if start_time is None else start_time))
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = float(value)
        else:
            info.hparams[key].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(version=0, session_start_info=info)
    return summary_event(SESSION_START_TAG, data.SerializeToString())


def session_end(success=True, end_time=None):
    """The event of the plugin's ``SessionEndInfo`` (status success or failure)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE,
        end_time_secs=time.time() if end_time is None else end_time)
    data = plugin_data_pb2.HParamsPluginData(version=0, session_end_info=end)
    return summary_event(SESSION_END_TAG, data.SerializeToString())


def write_events(path, events):
    """Write serialized events as a new TFRecord event file ``path`` (length, its masked
    CRC-32C, the data, its masked CRC-32C: mxboard's record format), through a temporary file
    and a rename."""
    from mxboard.record_writer import masked_crc32c

    from .runs import write_atomic

    def save(tmp):
        with open(tmp, "wb") as f:
            for event in events:
                header = struct.pack("Q", len(event))
                f.write(header + struct.pack("I", masked_crc32c(header)) + event
                        + struct.pack("I", masked_crc32c(event)))
    write_atomic(save, path)
