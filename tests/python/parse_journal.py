"""Checks journal lines with Python's protobuf JSON parser.

    parse_journal.py DESCRIPTOR_SET JOURNAL...

DESCRIPTOR_SET is the runner's own FileDescriptorSet (the one its
reflection service serves). Every line must parse with json_format.Parse
into rbe_runner.events.v1.Event, and printing the parsed message back with
every field that has no presence must give the same JSON object: that is
what "proto3 JSON with default-valued fields included" means. Prints the
number of lines checked; exits 1 naming the first line that fails.
"""

import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def main():
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_set.file:
        pool.Add(file)
    event_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("rbe_runner.events.v1.Event"))
    checked = 0
    for path in sys.argv[2:]:
        with open(path, encoding="utf-8") as journal:
            for number, line in enumerate(journal, 1):
                where = f"{path}:{number}"
                if not line.endswith("\n"):
                    sys.exit(f"{where}: the line has no newline")
                try:
                    event = json_format.Parse(line, event_class(), descriptor_pool=pool)
                except json_format.ParseError as error:
                    sys.exit(f"{where}: json_format.Parse refused it: {error}\n{line}")
                printed = json_format.MessageToDict(
                    event, always_print_fields_with_no_presence=True, descriptor_pool=pool
                )
                if printed != json.loads(line):
                    sys.exit(f"{where}: differs from protobuf's own rendering\nours:     {line}protobuf: {json.dumps(printed)}")
                checked += 1
    print(checked)


main()
