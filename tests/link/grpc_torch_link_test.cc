// SPDX-License-Identifier: Apache-2.0
// Debian's gRPC and Protobuf live in one process with the PyPI wheel's LibTorch: a protobuf message
// round trip, a real gRPC server and a client connection on loopback, and a tensor op,
// all in one binary. A symbol clash between the libraries would crash or corrupt this.
#include <ATen/ATen.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

namespace {

TEST(GrpcTorchLink, ProtobufGrpcAndTorchShareOneProcess) {
  google::protobuf::Struct message;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(R"({"steps": 15})", &message).ok());
  EXPECT_EQ(message.fields().at("steps").number_value(), 15);

  grpc::CallbackGenericService generic;  // a server needs one service to start
  grpc::ServerBuilder builder;
  builder.RegisterCallbackGenericService(&generic);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  EXPECT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
  server->Shutdown();

  EXPECT_EQ(at::ones({4, 4}).sum().item<float>(), 16.0f);
}

}  // namespace
